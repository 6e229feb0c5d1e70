"""LicenseService: the core registry over gRPC (and REST through Envoy)."""

from __future__ import annotations

from typing import Any

import grpc
from seedline.license.v1 import license_pb2 as pb
from seedline.license.v1 import license_pb2_grpc

from seedline_server.api import names
from seedline_server.api.convert import call, parse_quantity, replay, to_quantity, ts
from seedline_server.domain import quantity
from seedline_server.service import registry
from seedline_server.service.uow import Database, UnitOfWork
from seedline_server.store import models

Ctx = grpc.aio.ServicerContext[Any, Any]


def company_pb(row: models.Company) -> pb.Company:
    """Wire form of a company."""
    return pb.Company(
        name=f"companies/{row.id}", display_name=row.display_name, create_time=ts(row.create_time)
    )


def license_pb(row: models.License) -> pb.License:
    """Wire form of a license."""
    return pb.License(
        name=f"licenses/{row.id}",
        company=f"companies/{row.company_id}",
        license_number=row.license_number,
        display_name=row.display_name,
        type=row.type,  # type: ignore[arg-type]
        jurisdiction=row.jurisdiction,
        active=row.active,
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=registry.etag(row.id, row.version),
    )


def contact_pb(row: models.Contact) -> pb.Contact:
    """Wire form of a contact."""
    return pb.Contact(
        name=f"licenses/{row.license_id}/contacts/{row.id}",
        display_name=row.display_name,
        type=row.type,  # type: ignore[arg-type]
        email=row.email,
        phone=row.phone,
        create_time=ts(row.create_time),
    )


def section_pb(row: models.Section) -> pb.Section:
    """Wire form of a section."""
    return pb.Section(
        name=f"licenses/{row.license_id}/sections/{row.id}",
        display_name=row.display_name,
        type=row.type,  # type: ignore[arg-type]
        active=row.active,
        create_time=ts(row.create_time),
        update_time=ts(row.update_time),
        etag=registry.etag(row.id, row.version),
    )


def variety_pb(row: models.Variety) -> pb.Variety:
    """Wire form of a variety."""
    return pb.Variety(
        name=f"licenses/{row.license_id}/varieties/{row.id}",
        display_name=row.display_name,
        type=row.type,  # type: ignore[arg-type]
        create_time=ts(row.create_time),
    )


def _size(value: Any, unit: int) -> Any:
    if value is None or not unit:
        return None
    dim = quantity.dimension_of(quantity.Unit(unit))
    return to_quantity(quantity.Quantity(value, dim))


def product_pb(row: models.Product) -> pb.Product:
    """Wire form of a product (sizes in their storage unit)."""
    return pb.Product(
        name=f"licenses/{row.license_id}/products/{row.id}",
        display_name=row.display_name,
        product_type=row.product_type,
        package_type=row.package_type,  # type: ignore[arg-type]
        bulk_unit=row.bulk_unit,  # type: ignore[arg-type]
        unit_size=_size(row.unit_size_value, row.unit_size_unit),
        pack_unit_count=row.pack_unit_count,
        serving_size=_size(row.serving_size_value, row.serving_size_unit),
        servings_per_unit=row.servings_per_unit,
        create_time=ts(row.create_time),
    )


class LicenseServicer(license_pb2_grpc.LicenseServiceServicer):
    """Implements seedline.license.v1.LicenseService."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def CreateCompany(self, request: pb.CreateCompanyRequest, context: Ctx) -> pb.Company:
        async def run(uow: UnitOfWork) -> pb.Company:
            return company_pb(await registry.create_company(uow, request.company.display_name))

        return await self._db.write(
            call(request.request_id), run, replay("CreateCompany", request, pb.Company)
        )

    async def GetCompany(self, request: pb.GetCompanyRequest, context: Ctx) -> pb.Company:
        (company_id,) = names.parse(request.name, "companies/{}", "name")

        async def run(uow: UnitOfWork) -> pb.Company:
            return company_pb(await registry.get_company(uow, company_id))

        return await self._db.read(call(), run)

    async def ListCompanies(self, request: pb.ListCompaniesRequest, context: Ctx) -> pb.ListCompaniesResponse:
        async def run(uow: UnitOfWork) -> pb.ListCompaniesResponse:
            page = await registry.list_companies(uow, request.page_size, request.page_token)
            return pb.ListCompaniesResponse(
                companies=[company_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def CreateLicense(self, request: pb.CreateLicenseRequest, context: Ctx) -> pb.License:
        lic = request.license
        (company_id,) = names.parse(lic.company, "companies/{}", "license.company")
        new = registry.NewLicense(
            company_id=company_id,
            license_number=lic.license_number,
            display_name=lic.display_name,
            type=lic.type,
            jurisdiction=lic.jurisdiction,
            active=lic.active,
        )

        async def run(uow: UnitOfWork) -> pb.License:
            return license_pb(await registry.create_license(uow, new))

        return await self._db.write(
            call(request.request_id), run, replay("CreateLicense", request, pb.License)
        )

    async def GetLicense(self, request: pb.GetLicenseRequest, context: Ctx) -> pb.License:
        license_id = names.license_id(request.name, "name")

        async def run(uow: UnitOfWork) -> pb.License:
            return license_pb(await registry.get_license(uow, license_id))

        return await self._db.read(call(), run)

    async def ListLicenses(self, request: pb.ListLicensesRequest, context: Ctx) -> pb.ListLicensesResponse:
        company_id = names.parse(request.company, "companies/{}", "company")[0] if request.company else ""

        async def run(uow: UnitOfWork) -> pb.ListLicensesResponse:
            page = await registry.list_licenses(uow, company_id, request.page_size, request.page_token)
            return pb.ListLicensesResponse(
                licenses=[license_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def UpdateLicense(self, request: pb.UpdateLicenseRequest, context: Ctx) -> pb.License:
        license_id = names.license_id(request.license.name, "license.name")
        changes = {"display_name": request.license.display_name, "active": request.license.active}

        async def run(uow: UnitOfWork) -> pb.License:
            row = await registry.update_license(
                uow, license_id, changes, list(request.update_mask.paths), request.license.etag
            )
            return license_pb(row)

        return await self._db.write(call(), run)

    async def CreateContact(self, request: pb.CreateContactRequest, context: Ctx) -> pb.Contact:
        license_id = names.license_id(request.parent)
        c = request.contact
        row = models.Contact(display_name=c.display_name, type=c.type, email=c.email, phone=c.phone)

        async def run(uow: UnitOfWork) -> pb.Contact:
            return contact_pb(await registry.create_scoped(uow, license_id, row, "the contact", "contacts"))

        return await self._db.write(
            call(request.request_id), run, replay("CreateContact", request, pb.Contact)
        )

    async def GetContact(self, request: pb.GetContactRequest, context: Ctx) -> pb.Contact:
        license_id, contact_id = names.child(request.name, "contacts")

        async def run(uow: UnitOfWork) -> pb.Contact:
            return contact_pb(
                await registry.get_scoped(uow, models.Contact, license_id, contact_id, "contact", "contacts")
            )

        return await self._db.read(call(), run)

    async def ListContacts(self, request: pb.ListContactsRequest, context: Ctx) -> pb.ListContactsResponse:
        license_id = names.license_id(request.parent)

        async def run(uow: UnitOfWork) -> pb.ListContactsResponse:
            page = await registry.list_scoped(
                uow, models.Contact, license_id, request.page_size, request.page_token
            )
            return pb.ListContactsResponse(
                contacts=[contact_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def CreateSection(self, request: pb.CreateSectionRequest, context: Ctx) -> pb.Section:
        license_id = names.license_id(request.parent)
        s = request.section
        row = models.Section(display_name=s.display_name, type=s.type, active=True, version=1)

        async def run(uow: UnitOfWork) -> pb.Section:
            what = f"a section named {s.display_name!r}"
            return section_pb(await registry.create_scoped(uow, license_id, row, what, "sections"))

        return await self._db.write(
            call(request.request_id), run, replay("CreateSection", request, pb.Section)
        )

    async def GetSection(self, request: pb.GetSectionRequest, context: Ctx) -> pb.Section:
        license_id, section_id = names.child(request.name, "sections")

        async def run(uow: UnitOfWork) -> pb.Section:
            return section_pb(
                await registry.get_scoped(uow, models.Section, license_id, section_id, "section", "sections")
            )

        return await self._db.read(call(), run)

    async def ListSections(self, request: pb.ListSectionsRequest, context: Ctx) -> pb.ListSectionsResponse:
        license_id = names.license_id(request.parent)

        async def run(uow: UnitOfWork) -> pb.ListSectionsResponse:
            page = await registry.list_scoped(
                uow, models.Section, license_id, request.page_size, request.page_token
            )
            return pb.ListSectionsResponse(
                sections=[section_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def UpdateSection(self, request: pb.UpdateSectionRequest, context: Ctx) -> pb.Section:
        license_id, section_id = names.child(request.section.name, "sections", "section.name")
        changes = {"display_name": request.section.display_name, "active": request.section.active}

        async def run(uow: UnitOfWork) -> pb.Section:
            row = await registry.update_section(
                uow, license_id, section_id, changes, list(request.update_mask.paths), request.section.etag
            )
            return section_pb(row)

        return await self._db.write(call(), run)

    async def CreateVariety(self, request: pb.CreateVarietyRequest, context: Ctx) -> pb.Variety:
        license_id = names.license_id(request.parent)
        v = request.variety
        row = models.Variety(display_name=v.display_name, type=v.type)

        async def run(uow: UnitOfWork) -> pb.Variety:
            what = f"a variety named {v.display_name!r}"
            return variety_pb(await registry.create_scoped(uow, license_id, row, what, "varieties"))

        return await self._db.write(
            call(request.request_id), run, replay("CreateVariety", request, pb.Variety)
        )

    async def GetVariety(self, request: pb.GetVarietyRequest, context: Ctx) -> pb.Variety:
        license_id, variety_id = names.child(request.name, "varieties")

        async def run(uow: UnitOfWork) -> pb.Variety:
            return variety_pb(
                await registry.get_scoped(uow, models.Variety, license_id, variety_id, "variety", "varieties")
            )

        return await self._db.read(call(), run)

    async def ListVarieties(self, request: pb.ListVarietiesRequest, context: Ctx) -> pb.ListVarietiesResponse:
        license_id = names.license_id(request.parent)

        async def run(uow: UnitOfWork) -> pb.ListVarietiesResponse:
            page = await registry.list_scoped(
                uow, models.Variety, license_id, request.page_size, request.page_token
            )
            return pb.ListVarietiesResponse(
                varieties=[variety_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)

    async def CreateProduct(self, request: pb.CreateProductRequest, context: Ctx) -> pb.Product:
        license_id = names.license_id(request.parent)
        p = request.product
        unit_size = parse_quantity(p.unit_size, "product.unit_size") if p.HasField("unit_size") else None
        serving = (
            parse_quantity(p.serving_size, "product.serving_size") if p.HasField("serving_size") else None
        )
        row = models.Product(
            display_name=p.display_name,
            product_type=p.product_type,
            package_type=p.package_type,
            bulk_unit=p.bulk_unit if p.package_type == pb.PACKAGE_TYPE_BULK else quantity.Unit.EACH.value,
            unit_size_value=unit_size.amount if unit_size else None,
            unit_size_unit=unit_size.unit.value if unit_size else 0,
            pack_unit_count=p.pack_unit_count,
            serving_size_value=serving.amount if serving else None,
            serving_size_unit=serving.unit.value if serving else 0,
            servings_per_unit=p.servings_per_unit,
        )

        async def run(uow: UnitOfWork) -> pb.Product:
            return product_pb(await registry.create_scoped(uow, license_id, row, "the product", "products"))

        return await self._db.write(
            call(request.request_id), run, replay("CreateProduct", request, pb.Product)
        )

    async def GetProduct(self, request: pb.GetProductRequest, context: Ctx) -> pb.Product:
        license_id, product_id = names.child(request.name, "products")

        async def run(uow: UnitOfWork) -> pb.Product:
            return product_pb(
                await registry.get_scoped(uow, models.Product, license_id, product_id, "product", "products")
            )

        return await self._db.read(call(), run)

    async def ListProducts(self, request: pb.ListProductsRequest, context: Ctx) -> pb.ListProductsResponse:
        license_id = names.license_id(request.parent)

        async def run(uow: UnitOfWork) -> pb.ListProductsResponse:
            page = await registry.list_scoped(
                uow, models.Product, license_id, request.page_size, request.page_token
            )
            return pb.ListProductsResponse(
                products=[product_pb(r) for r in page.rows], next_page_token=page.next_page_token
            )

        return await self._db.read(call(), run)
