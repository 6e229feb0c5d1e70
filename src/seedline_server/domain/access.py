"""Who may do what: permissions, roles, and grants on licenses.

Every RPC declares the permission it needs in the contract (``seedline.type.v1.access``); a
principal holds grants: roles (or, for API keys, scopes) on licenses, or globally (``*``). One
function, :func:`allows`, decides; the interceptor calls it before any handler runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

AREAS = ("registry", "plant", "inventory", "lab", "transfer", "integration", "telemetry", "audit")
PERMISSIONS = frozenset(
    {f"{a}.{v}" for a in AREAS for v in ("read", "write")}
    | {"registry.admin", "auth.keys", "transfer.receive"}
)
ALL = "*"  # a grant on every license

_READ = frozenset(p for p in PERMISSIONS if p.endswith(".read"))

ROLES: dict[str, frozenset[str]] = {
    "admin": PERMISSIONS,
    "owner": PERMISSIONS - {"registry.admin"},
    "cultivator": frozenset({"plant.read", "plant.write", "inventory.read", "registry.read", "lab.read"}),
    "inventory_manager": frozenset(
        {
            "inventory.read",
            "inventory.write",
            "plant.read",
            "registry.read",
            "lab.read",
            "transfer.read",
            "transfer.write",
            "transfer.receive",
        }
    ),
    "lab": frozenset({"lab.read", "lab.write", "inventory.read", "registry.read"}),
    "transporter": frozenset({"transfer.read", "registry.read"}),
    "auditor": _READ,
    "partner": frozenset(
        {"registry.read", "plant.read", "inventory.read", "lab.read", "transfer.read", "transfer.receive"}
    ),
    "integration": _READ | {"integration.write", "telemetry.write"},
    "viewer": _READ - {"audit.read"},
}


def permissions_of(roles: Iterable[str]) -> frozenset[str]:
    """The permissions the roles give (unknown roles give none)."""
    out: set[str] = set()
    for role in roles:
        out |= ROLES.get(role, frozenset())
    return frozenset(out)


def scope_allows(scope: str, permission: str) -> bool:
    """Whether an API key scope (``inventory.read``, ``inventory.*``, ``*``) covers ``permission``."""
    if scope in ("*", permission):
        return True
    return scope.endswith(".*") and permission.startswith(scope[:-1])


@dataclass(frozen=True)
class Grants:
    """What a principal may do: permissions per license id (``*`` = every license)."""

    by_license: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_roles(cls, roles_by_license: Mapping[str, Iterable[str]]) -> Grants:
        """Grants from role names per license id."""
        return cls({lic: permissions_of(roles) for lic, roles in roles_by_license.items()})

    @classmethod
    def from_scopes(cls, licenses: Iterable[str], scopes: Iterable[str]) -> Grants:
        """Grants of an API key: its scopes on each of its licenses."""
        allowed = frozenset(p for p in PERMISSIONS if any(scope_allows(s, p) for s in scopes))
        return cls({lic: allowed for lic in licenses})

    def allows(self, permission: str, license_id: str | None) -> bool:
        """Whether ``permission`` is held on ``license_id`` (None: globally)."""
        if permission in self.by_license.get(ALL, frozenset()):
            return True
        return license_id is not None and permission in self.by_license.get(license_id, frozenset())

    def licenses(self) -> list[str]:
        """The license ids with any grant (``*`` included)."""
        return sorted(self.by_license)


NONE = Grants()
