"""Domain errors: what went wrong, in business terms. The API layer maps each to a gRPC status."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: a dotted path (e.g. ``plant.variety``) and what is wrong with it."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error a use case raises on purpose.

    Attributes:
        reason: the ``seedline.type.v1.ErrorReason`` value name.
        message: a sentence for humans.
        metadata: extra key/values for ``ErrorInfo.metadata``.

    """

    reason = "INTERNAL_ERROR"

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}


class InvalidArgument(DomainError):
    """The request is malformed; ``violations`` lists the fields."""

    reason = "VALIDATION_FAILED"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.violations = violations or []


class InvalidPageToken(InvalidArgument):
    """The page token cannot be decoded or belongs to another query."""

    reason = "INVALID_PAGE_TOKEN"


class InvalidUpdateMask(InvalidArgument):
    """The update mask names an unknown or immutable field."""

    reason = "INVALID_UPDATE_MASK"


class UnitMismatch(InvalidArgument):
    """Quantities of different dimensions were combined or a unit does not fit."""

    reason = "UNIT_MISMATCH"


@dataclass(frozen=True)
class _Resource:
    type: str
    name: str


class NotFound(DomainError):
    """The named resource does not exist (in the caller's license)."""

    reason = "RESOURCE_NOT_FOUND"

    def __init__(self, resource_type: str, name: str) -> None:
        super().__init__(f"{resource_type} {name!r} was not found", metadata={"resource": name})
        self.resource = _Resource(resource_type, name)


class AlreadyExists(DomainError):
    """A resource with the same unique key exists."""

    reason = "ALREADY_EXISTS"


class DuplicateEvent(AlreadyExists):
    """An event pushed by a remote was already received (its event id repeats)."""

    reason = "DUPLICATE_EVENT"


class RequestIdReused(DomainError):
    """The request id was used before with a different request body."""

    reason = "REQUEST_ID_REUSED"


class EtagMismatch(DomainError):
    """The caller's etag is stale."""

    reason = "ETAG_MISMATCH"


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the operation."""

    reason = "INVALID_STATE_TRANSITION"


class InvalidStateTransition(FailedPrecondition):
    """A lifecycle transition that the rules forbid."""

    reason = "INVALID_STATE_TRANSITION"


class ResourceLocked(FailedPrecondition):
    """The resource is destroyed or voided and cannot change."""

    reason = "RESOURCE_LOCKED"


class DestructionPending(FailedPrecondition):
    """A destruction awaits confirmation; only confirm or cancel are allowed."""

    reason = "DESTRUCTION_PENDING"


class ReferenceInvalid(FailedPrecondition):
    """A referenced resource exists but cannot be used here."""

    reason = "REFERENCE_INVALID"


class InsufficientQuantity(FailedPrecondition):
    """A lot holds less than the operation takes; nothing was changed."""

    reason = "INSUFFICIENT_QUANTITY"


class MassBalanceViolation(FailedPrecondition):
    """What goes into an operation does not equal what comes out plus the recorded waste."""

    reason = "MASS_BALANCE_VIOLATION"


class LabTestingRequired(FailedPrecondition):
    """The lot has no passing lab result where its product type requires one."""

    reason = "LAB_TESTING_REQUIRED"


class LicenseNotPermitted(FailedPrecondition):
    """The license may not receive (or do) this."""

    reason = "LICENSE_NOT_PERMITTED"


class ESignatureRequired(FailedPrecondition):
    """The operation needs a valid electronic signature."""

    reason = "ESIGNATURE_REQUIRED"


class RemoteRejected(FailedPrecondition):
    """A remote system refused the request or answered with something unusable."""

    reason = "REMOTE_REJECTED"


class NotImplementedYet(DomainError):
    """Part of the v1 contract that is not served yet."""

    reason = "NOT_IMPLEMENTED"


class CredentialsMissing(DomainError):
    """The RPC needs an authenticated caller and none was presented."""

    reason = "CREDENTIALS_MISSING"


class CredentialsInvalid(DomainError):
    """The credential presented is invalid, expired or revoked (no hint which)."""

    reason = "CREDENTIALS_INVALID"


class PermissionDenied(DomainError):
    """The caller holds no grant for this on the license named (before any lookup: AIP-193)."""

    reason = "PERMISSION_DENIED"


class DependencyUnavailable(DomainError):
    """The database or a remote system is unreachable."""

    reason = "DEPENDENCY_UNAVAILABLE"


class RateLimited(DomainError):
    """The caller used up its request budget; ``retry_after`` seconds until the next request is admitted."""

    reason = "RATE_LIMITED"

    def __init__(
        self, message: str, *, retry_after: float = 0.0, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after = max(0.0, retry_after)


@dataclass(frozen=True)
class Violations:
    """Accumulates field violations and raises them together."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, path: str, description: str) -> None:
        """Record one violation."""
        self.items.append(FieldViolation(path, description))

    def raise_if_any(self, message: str = "the request has invalid fields") -> None:
        """Raise :class:`InvalidArgument` if anything was recorded."""
        if self.items:
            raise InvalidArgument(message, list(self.items))
