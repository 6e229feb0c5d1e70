"""Integration fixtures: a license with a crop section and a variety, via the use cases."""

from __future__ import annotations

from dataclasses import dataclass

import pytest_asyncio

from seedline_server.service import registry
from seedline_server.service.context import CallContext, Principal
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import models

CTX = CallContext(principal=Principal(name="users/tester", kind="USER"), method="tests.integration")


@dataclass(frozen=True)
class Farm:
    license_id: str
    section_id: str
    variety_id: str


async def make_farm(database: Database, number: str) -> Farm:
    async def run(uow: UnitOfWork) -> Farm:
        company = await registry.create_company(uow, "Integration Co")
        lic = await registry.create_license(
            uow,
            registry.NewLicense(
                company_id=company.id,
                license_number=number,
                display_name="Farm",
                type=1,
                jurisdiction="US-CO",
                active=True,
            ),
        )
        section = await registry.create_scoped(
            uow,
            lic.id,
            models.Section(display_name="Crop", type=1, active=True, version=1),
            "section",
            "sections",
        )
        variety = await registry.create_scoped(
            uow, lic.id, models.Variety(display_name="Haze", type=0), "variety", "varieties"
        )
        return Farm(lic.id, section.id, variety.id)

    return await database.write(CTX, run)


@pytest_asyncio.fixture(loop_scope="session")
async def farm(database: Database, request: object) -> Farm:
    import uuid

    return await make_farm(database, f"IT-{uuid.uuid4().hex[:10]}")
