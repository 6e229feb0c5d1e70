"""OpenTHC objects → Seedline create requests: ids, amounts, units, types and refusals."""

from __future__ import annotations

import pytest
from seedline.license.v1 import license_pb2 as lic
from seedline.type.v1 import quantity_pb2 as qty

from seedline_server import openthc_mapping as m

PARENT = "licenses/01M961DJGRBSK3S8ZDBNJA9QYZ"


def test_request_ids_are_stable_per_object_and_apart_per_parent_and_kind() -> None:
    one = m.variety_request({"id": "V1", "name": "A"}, PARENT).request_id
    assert one == m.variety_request({"id": "V1", "name": "B"}, PARENT).request_id
    assert one != m.variety_request({"id": "V1", "name": "A"}, PARENT + "X").request_id
    assert one != m.section_request({"id": "V1", "name": "A"}, PARENT).request_id
    assert len(one) <= 64


def test_bulk_products_count_in_their_uom_and_each_products_need_a_unit_size() -> None:
    bulk = m.product_request({"id": "P", "name": "Flower", "package": {"type": "bulk", "uom": "kg"}}, PARENT)
    assert bulk.product.bulk_unit == qty.UNIT_KILOGRAM
    assert bulk.product.product_type == m.BULK_TYPE
    each = m.product_request(
        {"id": "P", "name": "Jar", "package": {"type": "each", "net_weight": 3.5}}, PARENT
    )
    assert each.product.unit_size == qty.Quantity(value="3.5", unit=qty.UNIT_GRAM)
    assert each.product.product_type == m.EACH_TYPE
    with pytest.raises(m.Invalid) as caught:
        m.product_request({"id": "P", "name": "Jar", "package": {"type": "each"}}, PARENT)
    assert caught.value.field == "package.net_weight"
    with pytest.raises(m.Invalid) as caught:
        m.product_request({"id": "P", "name": "Jar", "package": {"uom": "bushel"}}, PARENT)
    assert caught.value.field == "package.uom"


@pytest.mark.parametrize(
    ("value", "expected"), [(1234.5678, "1234.5678"), (10, "10"), ("0.25", "0.25"), (1e-9, "0.000000001")]
)
def test_lot_quantities_are_plain_decimals(value: object, expected: str) -> None:
    made = lic.Product(
        name=PARENT + "/products/P", package_type=lic.PACKAGE_TYPE_BULK, bulk_unit=qty.UNIT_GRAM
    )
    request = m.lot_request({"id": "I", "qty": value}, PARENT, made, "", PARENT + "/sections/S")
    assert request.lot.quantity.value == expected


@pytest.mark.parametrize("value", [-1, "lots", True, None, float("nan")])
def test_bad_quantities_are_refused_by_field(value: object) -> None:
    made = lic.Product(
        name=PARENT + "/products/P", package_type=lic.PACKAGE_TYPE_BULK, bulk_unit=qty.UNIT_GRAM
    )
    with pytest.raises(m.Invalid) as caught:
        m.lot_request({"id": "I", "qty": value}, PARENT, made, "", PARENT + "/sections/S")
    assert caught.value.field in ("qty", "unit_count")


def test_license_types_come_from_the_type_words_else_the_default_else_an_error() -> None:
    options = m.Options(jurisdiction="US-WA")
    assert m.license_type({"type": {"name": "Marijuana Retailer"}}, options) == lic.LICENSE_TYPE_RETAIL
    assert m.license_type({"type": {"code": "G", "name": "Producer/Processor"}}, options) == (
        lic.LICENSE_TYPE_GROWER_PROCESSOR
    )
    assert m.license_type({"type": {"name": "Processor"}}, options) == lic.LICENSE_TYPE_PROCESSOR
    with pytest.raises(m.Invalid):
        m.license_type({"type": {"name": "TEST LICENSE TYPE"}}, options)
    fallback = m.Options(jurisdiction="US-WA", license_type=lic.LICENSE_TYPE_GROWER)
    assert m.license_type({"type": {"name": "TEST LICENSE TYPE"}}, fallback) == lic.LICENSE_TYPE_GROWER


def test_licenses_need_a_jurisdiction_and_use_their_id_when_they_have_no_code() -> None:
    obj = {"id": "018NY6XC000ZK21YCA08SWDE7S", "name": "Grower", "type": {"name": "Grower"}}
    with pytest.raises(m.Invalid) as caught:
        m.license_request(obj, "companies/C", m.Options())
    assert caught.value.field == "jurisdiction"
    made = m.license_request(obj, "companies/C", m.Options(jurisdiction="US-WA"))
    assert made.license.license_number == obj["id"]


def test_kinds_come_from_singular_or_plural_names_only() -> None:
    assert m.kind_of("varieties") == "variety"
    assert m.kind_of("Lab_Result") is None
    assert m.kind_of("product-type") is None
