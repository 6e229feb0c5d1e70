"""Use cases of the core registry: companies, licenses, contacts, sections, varieties, products."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError

from seedline_server.crypto import REDACTED, is_secret_column
from seedline_server.domain import paging
from seedline_server.domain.errors import (
    AlreadyExists,
    EtagMismatch,
    FieldViolation,
    InvalidArgument,
    InvalidUpdateMask,
    NotFound,
)
from seedline_server.service.uow import UnitOfWork, new_id, now
from seedline_server.store import models

M = TypeVar("M", bound=models.Base)


def etag(row_id: str, version: int) -> str:
    """Opaque etag of a row version."""
    return hashlib.blake2b(f"{row_id}:{version}".encode(), digest_size=8).hexdigest()


def check_etag(given: str, row_id: str, version: int) -> None:
    """Raise ETAG_MISMATCH when a non-empty etag is stale."""
    if given and given != etag(row_id, version):
        raise EtagMismatch("the etag is stale: the resource changed since you read it; re-read and retry")


def snapshot(row: models.Base) -> dict[str, Any]:
    """A JSON-able dict of a row's columns for audit before/after; secret columns read ``***``."""
    out: dict[str, Any] = {}
    for column in row.__table__.columns:
        if is_secret_column(column.info):  # mapped_column(..., info={"secret": True})
            out[column.key] = REDACTED
            continue
        value = getattr(row, column.key)
        out[column.key] = str(value) if isinstance(value, Decimal) else value
    return out


@dataclass(frozen=True)
class Page(Generic[M]):
    """One page of rows and the token for the next."""

    rows: Sequence[M]
    next_page_token: str


async def list_page(
    uow: UnitOfWork,
    stmt: Select[Any],
    id_column: Any,
    size: int,
    token: str,
    query: dict[str, str],
) -> Page[M]:
    """Keyset pagination over ``id_column`` (ascending): no OFFSET, stable under inserts."""
    limit = paging.page_size(size)
    after = paging.decode_token(token, query)
    if after is not None:
        stmt = stmt.where(id_column > after)
    rows = list((await uow.session.scalars(stmt.order_by(id_column).limit(limit + 1))).all())
    next_token = ""
    if len(rows) > limit:
        rows = rows[:limit]
        next_token = paging.next_token(getattr(rows[-1], "id"), query)  # noqa: B009
    return Page(rows, next_token)


async def get_license(uow: UnitOfWork, license_id: str) -> models.License:
    """The license or NOT_FOUND."""
    row = await uow.session.get(models.License, license_id)
    if row is None:
        raise NotFound("license", f"licenses/{license_id}")
    return row


async def get_scoped(
    uow: UnitOfWork, model: type[M], license_id: str, row_id: str, kind: str, coll: str
) -> M:
    """A license-scoped row, or NOT_FOUND (also when it belongs to another license)."""
    row = await uow.session.get(model, row_id)
    if row is None or getattr(row, "license_id") != license_id:  # noqa: B009
        raise NotFound(kind, f"licenses/{license_id}/{coll}/{row_id}")
    return row


async def _insert(uow: UnitOfWork, row: models.Base, what: str) -> None:
    try:
        async with uow.session.begin_nested():
            uow.session.add(row)
            await uow.session.flush()
    except IntegrityError as exc:
        raise AlreadyExists(f"{what} already exists") from exc


# --- companies ---------------------------------------------------------------------------------


async def create_company(uow: UnitOfWork, display_name: str) -> models.Company:
    """Register a company."""
    row = models.Company(id=new_id(), display_name=display_name, create_time=now())
    await _insert(uow, row, "the company")
    await uow.audit(
        license_id=None, resource=f"companies/{row.id}", action="CREATE", before=None, after=snapshot(row)
    )
    return row


async def get_company(uow: UnitOfWork, company_id: str) -> models.Company:
    """One company or NOT_FOUND."""
    row = await uow.session.get(models.Company, company_id)
    if row is None:
        raise NotFound("company", f"companies/{company_id}")
    return row


async def list_companies(uow: UnitOfWork, size: int, token: str) -> Page[models.Company]:
    """A page of companies."""
    return await list_page(uow, select(models.Company), models.Company.id, size, token, {})


# --- licenses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewLicense:
    """Fields of a license to create."""

    company_id: str
    license_number: str
    display_name: str
    type: int
    jurisdiction: str
    active: bool


async def create_license(uow: UnitOfWork, new: NewLicense) -> models.License:
    """Register a license under an existing company."""
    await get_company(uow, new.company_id)
    t = now()
    row = models.License(
        id=new_id(),
        company_id=new.company_id,
        license_number=new.license_number,
        display_name=new.display_name,
        type=new.type,
        jurisdiction=new.jurisdiction,
        active=new.active,
        create_time=t,
        update_time=t,
        version=1,
    )
    await _insert(uow, row, f"license number {new.license_number!r} in {new.jurisdiction}")
    await uow.audit(
        license_id=row.id, resource=f"licenses/{row.id}", action="CREATE", before=None, after=snapshot(row)
    )
    return row


async def list_licenses(uow: UnitOfWork, company_id: str, size: int, token: str) -> Page[models.License]:
    """A page of licenses, optionally of one company."""
    stmt = select(models.License)
    if company_id:
        stmt = stmt.where(models.License.company_id == company_id)
    return await list_page(uow, stmt, models.License.id, size, token, {"company": company_id})


def apply_mask(row: models.Base, changes: dict[str, Any], mask: Sequence[str], mutable: set[str]) -> None:
    """Copy the masked fields from ``changes`` onto ``row`` (empty mask or ``*``: all mutable)."""
    paths = list(mask) or sorted(mutable)
    if paths == ["*"]:
        paths = sorted(mutable)
    bad = [p for p in paths if p not in mutable]
    if bad:
        raise InvalidUpdateMask(
            f"update_mask names fields that cannot be updated: {', '.join(bad)} "
            f"(mutable: {', '.join(sorted(mutable))})"
        )
    if "display_name" in paths and not str(changes["display_name"]).strip():
        raise InvalidArgument(
            "display_name cannot be empty", [FieldViolation("display_name", "must not be empty")]
        )
    for path in paths:
        setattr(row, path, changes[path])


async def update_license(
    uow: UnitOfWork, license_id: str, changes: dict[str, Any], mask: Sequence[str], given_etag: str
) -> models.License:
    """Change display_name / active under optimistic concurrency."""
    row = await get_license(uow, license_id)
    check_etag(given_etag, row.id, row.version)
    before = snapshot(row)
    apply_mask(row, changes, mask, {"display_name", "active"})
    row.version += 1
    row.update_time = now()
    await uow.audit(
        license_id=row.id, resource=f"licenses/{row.id}", action="UPDATE", before=before, after=snapshot(row)
    )
    return row


# --- contacts, sections, varieties, products ---------------------------------------------------


async def create_scoped(uow: UnitOfWork, license_id: str, row: M, what: str, coll: str) -> M:
    """Insert a license-scoped row (id and times set here) and audit it."""
    await get_license(uow, license_id)
    t = now()
    row.id = new_id()  # type: ignore[attr-defined]
    row.license_id = license_id  # type: ignore[attr-defined]
    row.create_time = t  # type: ignore[attr-defined]
    if hasattr(row, "update_time"):
        row.update_time = t
    await _insert(uow, row, what)
    await uow.audit(
        license_id=license_id,
        resource=f"licenses/{license_id}/{coll}/{row.id}",  # type: ignore[attr-defined]
        action="CREATE",
        before=None,
        after=snapshot(row),
    )
    return row


async def list_scoped(uow: UnitOfWork, model: type[M], license_id: str, size: int, token: str) -> Page[M]:
    """A page of one license's rows of ``model``."""
    await get_license(uow, license_id)
    id_col = getattr(model, "id")  # noqa: B009
    stmt = select(model).where(getattr(model, "license_id") == license_id)  # noqa: B009
    return await list_page(uow, stmt, id_col, size, token, {"parent": license_id})


async def update_section(
    uow: UnitOfWork,
    license_id: str,
    section_id: str,
    changes: dict[str, Any],
    mask: Sequence[str],
    given_etag: str,
) -> models.Section:
    """Change a section's display_name / active under optimistic concurrency."""
    row = await get_scoped(uow, models.Section, license_id, section_id, "section", "sections")
    check_etag(given_etag, row.id, row.version)
    before = snapshot(row)
    apply_mask(row, changes, mask, {"display_name", "active"})
    row.version += 1
    row.update_time = now()
    try:
        async with uow.session.begin_nested():
            await uow.session.flush()
    except IntegrityError as exc:
        raise AlreadyExists(f"a section named {row.display_name!r} already exists") from exc
    await uow.audit(
        license_id=license_id,
        resource=f"licenses/{license_id}/sections/{row.id}",
        action="UPDATE",
        before=before,
        after=snapshot(row),
    )
    return row
