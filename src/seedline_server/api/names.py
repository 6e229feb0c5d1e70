"""Parsing and formatting of resource names (AIP-122)."""

from __future__ import annotations

import re

from seedline_server.domain.errors import FieldViolation, InvalidArgument

_ULID = r"([0-9A-HJKMNP-TV-Z]{26})"


def parse(name: str, pattern: str, field: str) -> tuple[str, ...]:
    """Split ``name`` by ``pattern`` (e.g. ``licenses/{}/plants/{}``) into its ULID ids.

    Raises:
        InvalidArgument: the name does not match, naming ``field`` in the violation.

    """
    regex = "^" + re.escape(pattern).replace(r"\{\}", _ULID) + "$"
    match = re.fullmatch(regex, name)
    if match is None:
        example = pattern.replace("{}", "01JD…")
        raise InvalidArgument(
            f"{field} must look like {example!r} with ULID ids, got {name!r}",
            [FieldViolation(field, f"must match {pattern.replace('{}', '{ULID}')}")],
        )
    return match.groups()


def license_id(name: str, field: str = "parent") -> str:
    """The license id of ``licenses/{license}``."""
    return parse(name, "licenses/{}", field)[0]


def child(name: str, collection: str, field: str = "name") -> tuple[str, str]:
    """(license id, child id) of ``licenses/{license}/<collection>/{id}``."""
    lic, cid = parse(name, "licenses/{}/" + collection + "/{}", field)
    return lic, cid


def same_license(parent_license: str, name: str, collection: str, field: str) -> str:
    """The id of a referenced child, which must live in ``parent_license``."""
    lic, cid = child(name, collection, field)
    if lic != parent_license:
        raise InvalidArgument(
            f"{field} must belong to licenses/{parent_license}",
            [FieldViolation(field, f"must be under licenses/{parent_license}")],
        )
    return cid
