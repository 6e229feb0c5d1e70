"""The map from domain errors to rich ``google.rpc.Status`` values."""

from __future__ import annotations

import importlib
import pkgutil

import grpc
import pytest
from google.protobuf import message as pb_message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from seedline.type.v1 import error_reason_pb2

import seedline_server
from seedline_server.api import errors as api_errors
from seedline_server.domain import errors as e

# Expected google.rpc code per class, written out by hand: a new DomainError subclass must be added.
EXPECTED_CODES: dict[type[e.DomainError], int] = {
    e.InvalidArgument: 3,
    e.InvalidPageToken: 3,
    e.InvalidUpdateMask: 3,
    e.UnitMismatch: 3,
    e.NotFound: 5,
    e.AlreadyExists: 6,
    e.DuplicateEvent: 6,
    e.RequestIdReused: 6,
    e.EtagMismatch: 10,
    e.FailedPrecondition: 9,
    e.InvalidStateTransition: 9,
    e.ResourceLocked: 9,
    e.DestructionPending: 9,
    e.ReferenceInvalid: 9,
    e.ESignatureRequired: 9,
    e.InsufficientQuantity: 9,
    e.MassBalanceViolation: 9,
    e.LabTestingRequired: 9,
    e.CredentialsMissing: 16,
    e.CredentialsInvalid: 16,
    e.PermissionDenied: 7,
    e.LicenseNotPermitted: 9,
    e.RemoteRejected: 9,
    e.NotImplementedYet: 12,
    e.DependencyUnavailable: 14,
    e.RateLimited: 8,
}

EXPECTED_REASONS: dict[type[e.DomainError], str] = {
    e.InvalidArgument: "VALIDATION_FAILED",
    e.InvalidPageToken: "INVALID_PAGE_TOKEN",
    e.InvalidUpdateMask: "INVALID_UPDATE_MASK",
    e.UnitMismatch: "UNIT_MISMATCH",
    e.NotFound: "RESOURCE_NOT_FOUND",
    e.AlreadyExists: "ALREADY_EXISTS",
    e.DuplicateEvent: "DUPLICATE_EVENT",
    e.RequestIdReused: "REQUEST_ID_REUSED",
    e.EtagMismatch: "ETAG_MISMATCH",
    e.FailedPrecondition: "INVALID_STATE_TRANSITION",
    e.InvalidStateTransition: "INVALID_STATE_TRANSITION",
    e.ResourceLocked: "RESOURCE_LOCKED",
    e.DestructionPending: "DESTRUCTION_PENDING",
    e.ReferenceInvalid: "REFERENCE_INVALID",
    e.ESignatureRequired: "ESIGNATURE_REQUIRED",
    e.InsufficientQuantity: "INSUFFICIENT_QUANTITY",
    e.MassBalanceViolation: "MASS_BALANCE_VIOLATION",
    e.LabTestingRequired: "LAB_TESTING_REQUIRED",
    e.CredentialsMissing: "CREDENTIALS_MISSING",
    e.CredentialsInvalid: "CREDENTIALS_INVALID",
    e.PermissionDenied: "PERMISSION_DENIED",
    e.LicenseNotPermitted: "LICENSE_NOT_PERMITTED",
    e.RemoteRejected: "REMOTE_REJECTED",
    e.NotImplementedYet: "NOT_IMPLEMENTED",
    e.DependencyUnavailable: "DEPENDENCY_UNAVAILABLE",
    e.RateLimited: "RATE_LIMITED",
}


def _import_all_server_modules() -> None:
    """Import every implementation module so subclasses defined outside domain.errors are found too."""
    for info in pkgutil.walk_packages(seedline_server.__path__, prefix="seedline_server."):
        if ".migrations" not in info.name:
            importlib.import_module(info.name)


_import_all_server_modules()


def all_subclasses(cls: type[e.DomainError]) -> set[type[e.DomainError]]:
    found: set[type[e.DomainError]] = set()
    for sub in cls.__subclasses__():
        found.add(sub)
        found |= all_subclasses(sub)
    return found


SUBCLASSES = sorted(all_subclasses(e.DomainError), key=lambda c: c.__name__)


def make(cls: type[e.DomainError]) -> e.DomainError:
    if issubclass(cls, e.NotFound):
        return cls("plant", "licenses/L/plants/P")
    return cls(f"{cls.__name__} happened")


def details(status: status_pb2.Status, kind: type[pb_message.Message]) -> list[pb_message.Message]:
    out = []
    for packed in status.details:
        if packed.Is(kind.DESCRIPTOR):
            msg = kind()
            packed.Unpack(msg)
            out.append(msg)
    return out


def error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    (info,) = details(status, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    return info


# ---------------------------------------------------------------------------------------------
# The table is complete and the contract knows every reason


def test_every_domain_error_subclass_has_an_expected_code() -> None:
    assert set(SUBCLASSES) == set(EXPECTED_CODES)
    assert set(SUBCLASSES) == set(EXPECTED_REASONS)


def test_every_reason_is_a_contract_error_reason() -> None:
    contract = set(error_reason_pb2.ErrorReason.keys())
    for cls in [e.DomainError, *SUBCLASSES]:
        assert cls.reason in contract, f"{cls.__name__}.reason={cls.reason!r} is not in ErrorReason"
        assert cls.reason != "ERROR_REASON_UNSPECIFIED"


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_reason_is_the_class_reason(cls: type[e.DomainError]) -> None:
    assert cls.reason == EXPECTED_REASONS[cls]


# ---------------------------------------------------------------------------------------------
# to_status


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: c.__name__)
def test_code_and_error_info(cls: type[e.DomainError]) -> None:
    exc = make(cls)
    status = api_errors.to_status(exc)
    assert status.code == EXPECTED_CODES[cls]
    assert status.message == exc.message
    info = error_info(status)
    assert info.domain == "seedline.dev"
    assert info.reason == cls.reason
    # ErrorInfo always comes first.
    assert status.details[0].Is(error_details_pb2.ErrorInfo.DESCRIPTOR)


def test_code_values_are_the_google_rpc_codes() -> None:
    assert (
        code_pb2.INVALID_ARGUMENT,
        code_pb2.NOT_FOUND,
        code_pb2.ALREADY_EXISTS,
        code_pb2.FAILED_PRECONDITION,
        code_pb2.ABORTED,
        code_pb2.UNIMPLEMENTED,
        code_pb2.UNAVAILABLE,
    ) == (3, 5, 6, 9, 10, 12, 14)


def test_base_domain_error_is_internal() -> None:
    status = api_errors.to_status(e.DomainError("unexpected"))
    assert status.code == code_pb2.INTERNAL
    assert error_info(status).reason == "INTERNAL_ERROR"


def test_metadata_is_copied_into_error_info() -> None:
    exc = e.InvalidStateTransition("no", metadata={"from": "FLOWERING", "to": "CLONE"})
    info = error_info(api_errors.to_status(exc))
    assert dict(info.metadata) == {"from": "FLOWERING", "to": "CLONE"}


def test_metadata_of_invalid_argument_subclasses_is_kept() -> None:
    exc = e.UnitMismatch("lb is not a volume", metadata={"unit": "lb"})
    assert exc.metadata == {"unit": "lb"}
    assert dict(error_info(api_errors.to_status(exc)).metadata) == {"unit": "lb"}


def test_invalid_argument_carries_a_bad_request_with_every_violation() -> None:
    exc = e.InvalidArgument(
        "invalid request",
        [e.FieldViolation("plant.variety", "must match X"), e.FieldViolation("page_size", "must be >= 0")],
    )
    status = api_errors.to_status(exc)
    assert status.code == code_pb2.INVALID_ARGUMENT
    (bad,) = details(status, error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("plant.variety", "must match X"),
        ("page_size", "must be >= 0"),
    ]
    assert not details(status, error_details_pb2.ResourceInfo)


def test_violations_raised_through_the_accumulator_reach_bad_request() -> None:
    acc = e.Violations()
    acc.add("a", "bad a")
    acc.add("b.c[0]", "bad c")
    with pytest.raises(e.InvalidArgument) as info:
        acc.raise_if_any()
    (bad,) = details(api_errors.to_status(info.value), error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == ["a", "b.c[0]"]


def test_empty_accumulator_does_not_raise() -> None:
    e.Violations().raise_if_any()


@pytest.mark.parametrize("cls", [e.InvalidArgument, e.UnitMismatch, e.InvalidPageToken, e.InvalidUpdateMask])
def test_invalid_argument_without_violations_has_no_bad_request(cls: type[e.InvalidArgument]) -> None:
    status = api_errors.to_status(cls("x"))
    assert status.code == code_pb2.INVALID_ARGUMENT
    assert not details(status, error_details_pb2.BadRequest)
    assert len(status.details) == 1


@pytest.mark.parametrize(
    "cls", [c for c in SUBCLASSES if not issubclass(c, (e.InvalidArgument, e.NotFound, e.RateLimited))]
)
def test_other_errors_carry_only_error_info(cls: type[e.DomainError]) -> None:
    status = api_errors.to_status(make(cls))
    assert len(status.details) == 1


@pytest.mark.parametrize(
    ("resource_type", "expected"),
    [
        ("plant", "seedline.dev/Plant"),
        ("grow material", "seedline.dev/GrowMaterial"),
        ("License", "seedline.dev/License"),
    ],
)
def test_not_found_carries_resource_info(resource_type: str, expected: str) -> None:
    name = "licenses/01JD0000000000000000000000/plants/01JD0000000000000000000001"
    status = api_errors.to_status(e.NotFound(resource_type, name))
    assert status.code == code_pb2.NOT_FOUND
    (res,) = details(status, error_details_pb2.ResourceInfo)
    assert isinstance(res, error_details_pb2.ResourceInfo)
    assert res.resource_type == expected
    assert res.resource_name == name
    assert name in res.description
    info = error_info(status)
    assert info.reason == "RESOURCE_NOT_FOUND"
    assert dict(info.metadata) == {"resource": name}
    assert not details(status, error_details_pb2.BadRequest)


# ---------------------------------------------------------------------------------------------
# internal_status and to_grpc


def test_internal_status_carries_only_the_request_id() -> None:
    status = api_errors.internal_status("req-123")
    assert status.code == code_pb2.INTERNAL
    assert "req-123" in status.message
    assert len(status.details) == 1
    info = error_info(status)
    assert info.reason == "INTERNAL_ERROR"
    assert info.domain == "seedline.dev"
    assert dict(info.metadata) == {}
    # Apart from the id, the message is a constant: nothing about the failure can leak into it.
    other = api_errors.internal_status("zzz-999")
    assert status.message.replace("req-123", "ID") == other.message.replace("zzz-999", "ID")
    assert status.details == other.details


def test_internal_status_without_request_id() -> None:
    status = api_errors.internal_status("")
    assert status.code == code_pb2.INTERNAL
    assert "none" in status.message


def test_to_grpc_keeps_code_message_and_details() -> None:
    status = api_errors.to_status(e.EtagMismatch("stale etag"))
    converted = api_errors.to_grpc(status)
    assert converted.code is grpc.StatusCode.ABORTED
    assert converted.details == "stale etag"
    trailers = dict(converted.trailing_metadata)
    decoded = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert decoded == status


def test_rate_limited_carries_retry_info_rounded_up_to_the_millisecond() -> None:
    status = api_errors.to_status(e.RateLimited("slow down", retry_after=1.2341))
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert error_info(status).reason == "RATE_LIMITED"
    (retry,) = details(status, error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 1235
    assert not details(api_errors.to_status(e.DependencyUnavailable("x")), error_details_pb2.RetryInfo)
