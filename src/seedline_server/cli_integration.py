"""``seedline integration sync``: start a sync run through the API and follow it to its end.

The run is started with SyncIntegration (so the caller's access is checked and the request is
audited like any other), then followed through ``Integration.latest_sync_run`` until it leaves
QUEUED/RUNNING; the differences its reconciliation found are counted by kind with
ListSyncDifferences.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from seedline.integration.v1 import integration_pb2 as pb
from seedline.integration.v1 import integration_pb2_grpc

from seedline_server import cli_grpc

SCOPES = {
    "plants": [pb.SYNC_SCOPE_PLANTS],
    "inventory": [pb.SYNC_SCOPE_INVENTORY],
    "all": [pb.SYNC_SCOPE_PLANTS, pb.SYNC_SCOPE_INVENTORY],
}
DIRECTIONS = {
    "pull": pb.SYNC_DIRECTION_PULL,
    "push": pb.SYNC_DIRECTION_PUSH,
    "both": pb.SYNC_DIRECTION_BOTH,
}
MODES = {"full": pb.SYNC_MODE_FULL, "incremental": pb.SYNC_MODE_INCREMENTAL}
_ACTIVE = (pb.SYNC_RUN_STATE_QUEUED, pb.SYNC_RUN_STATE_RUNNING)


class SyncError(Exception):
    """The run could not be started or followed (the message says why)."""


@dataclass
class Outcome:
    """How a sync run ended."""

    run: pb.SyncRun
    differences: Counter[str] = field(default_factory=Counter)

    @property
    def state(self) -> str:
        """The run's state without the enum prefix (SUCCEEDED, FAILED, ...)."""
        return state_name(self.run)

    @property
    def failed(self) -> bool:
        """Whether the run ended FAILED."""
        return bool(self.run.state == pb.SYNC_RUN_STATE_FAILED)

    @property
    def seconds(self) -> float | None:
        """From start to end, when the run has both."""
        if not (self.run.HasField("start_time") and self.run.HasField("end_time")):
            return None
        span = self.run.end_time.ToDatetime() - self.run.start_time.ToDatetime()
        return span.total_seconds()


def integration_name(value: str, license_: str | None) -> str:
    """``licenses/L/integrations/I`` from a full name, or from ``I`` and ``--license L``."""
    if value.startswith("licenses/"):
        return value
    if license_ is None:
        raise SyncError("give the integration as licenses/L/integrations/I, or its id with --license")
    return f"licenses/{license_.removeprefix('licenses/')}/integrations/{value}"


def check_choices(scope: str, direction: str, mode: str) -> None:
    """Raise SyncError naming the first option whose value is not one of its choices."""
    given = (("scope", scope, SCOPES), ("direction", direction, DIRECTIONS), ("mode", mode, MODES))
    for option, value, allowed in given:
        if value.lower() not in allowed:
            raise SyncError(f"--{option} must be one of {', '.join(allowed)}")


def state_name(run: pb.SyncRun) -> str:
    """The run's state without the enum prefix."""
    return pb.SyncRunState.Name(run.state).removeprefix("SYNC_RUN_STATE_")


def processed(run: pb.SyncRun) -> int:
    """Records handled so far: pulled, pushed, unchanged and failed over all scopes."""
    return sum(c.pulled_count + c.pushed_count + c.unchanged_count + c.failed_count for c in run.counts)


async def sync(
    target: str,
    name: str,
    *,
    scopes: list[pb.SyncScope.ValueType],
    direction: pb.SyncDirection.ValueType,
    mode: pb.SyncMode.ValueType,
    token: str | None,
    request_id: str | None = None,
    poll: float = 0.5,
    wait_at_most: float = 3600.0,
    on_progress: Callable[[pb.SyncRun], None] | None = None,
) -> Outcome:
    """Start a sync run of integration ``name`` and wait for it to end.

    Args:
        target: host:port of the server's direct gRPC listener.
        name: ``licenses/L/integrations/I``.
        scopes: SyncScope values.
        direction: a SyncDirection value.
        mode: a SyncMode value.
        token: Bearer token (JWT, session token or API key) sent with every call.
        request_id: Idempotency key of the start (a retry with it follows the same run).
        poll: Seconds between looks at the run.
        wait_at_most: Seconds to wait for the run to end.
        on_progress: Called with the run each time it is read.

    Returns:
        The ended run and its differences counted by kind.

    Raises:
        SyncError: the server refused the start, or the run could not be followed.

    """
    md = cli_grpc.metadata(token)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = integration_pb2_grpc.IntegrationServiceStub(channel)
        request = pb.SyncIntegrationRequest(
            name=name,
            scopes=scopes,
            direction=direction,
            mode=mode,
            request_id=request_id or str(uuid.uuid4()),
        )
        try:
            run: pb.SyncRun = await stub.SyncIntegration(request, metadata=md)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_at_most
            while True:
                if on_progress is not None:
                    on_progress(run)
                if run.state not in _ACTIVE:
                    break
                if loop.time() > deadline:
                    raise SyncError(f"sync run {run.id} did not end within {wait_at_most:.0f} s")
                await asyncio.sleep(poll)
                integration = await stub.GetIntegration(pb.GetIntegrationRequest(name=name), metadata=md)
                latest = integration.latest_sync_run
                if latest.id != run.id:
                    raise SyncError(
                        f"sync run {run.id} is no longer the latest run ({latest.id}); see the logs"
                    )
                run = latest
            differences: Counter[str] = Counter()
            page = ""
            while run.difference_count:
                listed = await stub.ListSyncDifferences(
                    pb.ListSyncDifferencesRequest(
                        parent=name, sync_run_id=run.id, page_size=100, page_token=page
                    ),
                    metadata=md,
                )
                for d in listed.differences:
                    differences[pb.DifferenceKind.Name(d.kind).removeprefix("DIFFERENCE_KIND_")] += 1
                page = listed.next_page_token
                if not page:
                    break
        except grpc.aio.AioRpcError as err:
            raise SyncError(cli_grpc.describe_error(err)) from None
    return Outcome(run, differences)


def describe(outcome: Outcome) -> list[str]:
    """The summary lines printed after a run."""
    run = outcome.run
    seconds = outcome.seconds
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines = [f"sync run {run.id}: {outcome.state}{took}"]
    for c in run.counts:
        scope = pb.SyncScope.Name(c.scope).removeprefix("SYNC_SCOPE_").lower()
        lines.append(
            f"  {scope:<12} pulled {c.pulled_count}  pushed {c.pushed_count}"
            f"  unchanged {c.unchanged_count}  failed {c.failed_count}"
        )
    pulled = sum(c.pulled_count for c in run.counts)
    pushed = sum(c.pushed_count for c in run.counts)
    lines.append(f"  records pulled {pulled}, pushed {pushed}")
    if outcome.differences:
        kinds = ", ".join(f"{k.lower()} {n}" for k, n in sorted(outcome.differences.items()))
        lines.append(f"  differences {run.difference_count}: {kinds}")
    else:
        lines.append(f"  differences {run.difference_count}")
    if run.error_detail:
        lines.append(f"  error: {run.error_detail}")
    return lines
