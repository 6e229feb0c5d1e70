"""What the outbox worker asks of a connector, and what a connector answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from seedline_server.integrations.transport import Exchange

__all__ = ["Connector", "Job", "Outcome", "TestReport"]


@dataclass(frozen=True)
class Job:
    """A claimed delivery.

    Attributes:
        id: The delivery id (also the webhook event id).
        integration_id: The integration it goes to.
        license_id: The license whose change it reports.
        event_type: ``plant.created``, ``transfer.committed``...
        resource: The Seedline resource the change is about.
        payload: ``{"verb", "before", "after"}`` snapshots of the change.
        attempt: This attempt's number, from 1.
        look_first: An earlier attempt may have reached the remote: look before resending.
        create_time: When the change committed.
        audit_event_id: The audit event of the change, if any.

    """

    id: str
    integration_id: str
    license_id: str
    event_type: str
    resource: str
    payload: dict[str, Any]
    attempt: int
    look_first: bool
    create_time: datetime
    audit_event_id: str | None


@dataclass
class Outcome:
    """A delivery that succeeded (or had nothing to send).

    Attributes:
        summary: One line for the log ("registered plant 1A4...", "not reported to METRC").
        remote_ids: Seedline resource name → the remote's id of it, to remember.
        found_existing: A look-before-resend found the record already at the remote.

    """

    summary: str
    remote_ids: dict[str, str] = field(default_factory=dict)
    found_existing: bool = False


@dataclass(frozen=True)
class TestReport:
    """What a connection test (TestIntegration) found.

    Attributes:
        reachable: The remote answered at all (TLS and HTTP worked).
        authenticated: It accepted our credentials.
        license_visible: The configured license/facility/location is visible to them.
        latency: Time of the authenticating call; None when unreachable.
        detail: One line for a person.

    """

    __test__ = False  # not a pytest class

    reachable: bool
    authenticated: bool
    license_visible: bool
    latency: timedelta | None
    detail: str


class Connector(Protocol):
    """Delivers outbox jobs to one integration's remote."""

    async def deliver(self, job: Job, log: list[Exchange]) -> Outcome:
        """Deliver ``job``; append every exchange made to ``log``.

        Raises:
            RemoteError: the delivery failed (classified retryable or permanent).

        """
        ...

    async def probe(self, log: list[Exchange]) -> None:
        """A cheap authenticated call to see whether the remote is back (half-open breaker).

        Raises:
            RemoteError: it is not.

        """
        ...

    async def test(self, log: list[Exchange]) -> TestReport:
        """A real authenticated call that reports what it found (never raises for remote errors)."""
        ...
