"""Schemathesis over the REST face (Envoy, mutual TLS), driven by ``gen/openapi.json``.

Shared by ``tests/e2e/test_rest_fuzz.py`` (a few examples per operation, in CI) and
``bench/fuzz_rest.py`` (a larger run). Every operation of the document is called with generated
requests; each response must not be a 5xx and must match the document (status code, content
type, headers, body schema). Findings are collected, not raised, so one run reports them all.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from seedline_server.certs import DevPki

REPO = Path(__file__).resolve().parents[2]
OPENAPI = REPO / "gen" / "openapi.json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Finding:
    """One failed check: which operation, what was sent, what came back."""

    operation: str
    check: str
    message: str
    request: str
    status: int
    response: str

    def __str__(self) -> str:
        return (
            f"{self.operation} [{self.check}] {self.message}\n  request: {self.request}\n"
            f"  response: {self.status} {self.response}"
        )


@dataclass
class Report:
    """Counts per operation and status, and every finding (deduplicated per operation and check)."""

    calls: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    findings: dict[tuple[str, str, str], Finding] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    unimplemented: set[str] = field(default_factory=set)
    seconds: float = 0.0

    def record(self, operation: str, status: int) -> None:
        self.calls[operation] += 1
        self.statuses.setdefault(operation, Counter())[status] += 1


def partner_session(pki: DevPki) -> requests.Session:
    """A requests session presenting the partner certificate and trusting the dev CA."""
    session = requests.Session()
    session.cert = (str(pki.partner_cert), str(pki.partner_key))
    session.verify = str(pki.ca_cert)
    session.trust_env = False  # REQUESTS_CA_BUNDLE / proxies from the environment would override verify
    return session


def load_schema(path: Path = OPENAPI) -> Any:
    """The generated OpenAPI document as a schemathesis schema."""
    return schemathesis.openapi.from_path(str(path))


def _flatten(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _flatten(inner)
    else:
        yield exc


def _unimplemented(response: requests.Response) -> bool:
    if response.status_code != 501:
        return False
    try:
        details = response.json().get("details", [])
    except ValueError:
        return False
    return any(isinstance(d, dict) and d.get("reason") == "NOT_IMPLEMENTED" for d in details)


def _body_text(response: requests.Response, limit: int = 600) -> str:
    text = response.text
    return text if len(text) <= limit else text[:limit] + "…"


def run(
    base_url: str,
    session: requests.Session,
    *,
    examples: int,
    seed: int = 0,
    path_values: dict[str, str] | None = None,
    timeout: float = 5.0,
    select: Callable[[str], bool] = lambda _label: True,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Call every operation ``examples`` times with generated requests and check the responses.

    Args:
        base_url: Envoy's partner listener.
        session: a session presenting the partner certificate.
        examples: generated requests per operation.
        seed: makes a run repeatable.
        path_values: real ids to substitute for path parameters on half of the calls (e.g.
            ``{"license": "01J..."}``) so requests reach past NOT_FOUND.
        timeout: per request; server-streaming operations answer once the stream ends.
        select: which operations (by label, e.g. ``GET /v1/companies``) to run.
        log: progress lines.

    """
    schema = load_schema()
    report = Report()
    rng = random.Random(seed)
    started = time.perf_counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        if not select(label):
            continue
        # Streaming RPCs (`:watch`) hold the response open: a short read timeout ends them.
        per_call = 1.5 if ":watch" in label else timeout

        def make(operation: Any, label: str, per_call: float) -> Callable[[], None]:
            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=False,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
                verbosity=hypothesis.Verbosity.quiet,
            )
            @hypothesis.seed(seed)
            @hypothesis.given(case=operation.as_strategy())
            def one(case: Any) -> None:
                if path_values and rng.random() < 0.5:
                    for name in case.path_parameters or {}:
                        if name in path_values:
                            case.path_parameters[name] = path_values[name]
                try:
                    # schemathesis passes its own verify=True unless told: repeat the session's TLS.
                    response = case.call(
                        base_url=base_url,
                        session=session,
                        timeout=per_call,
                        verify=session.verify,
                        cert=session.cert,
                    )
                except requests.exceptions.ReadTimeout:
                    report.record(label, 0)  # a stream that stayed open: not a finding
                    return
                report.record(label, response.status_code)
                checks = CHECKS
                if _unimplemented(response):
                    report.unimplemented.add(label)
                    checks = CHECKS[1:]  # 501 is the contract's answer for an RPC not served yet
                try:
                    case.validate_response(response, checks=checks)
                except (Exception, BaseExceptionGroup) as exc:  # a FailureGroup of Failures
                    for failure in _flatten(exc):
                        check = type(failure).__name__
                        message = str(getattr(failure, "title", "") or failure).splitlines()[0]
                        key = (label, check, message[:120])
                        if key not in report.findings:
                            report.findings[key] = Finding(
                                operation=label,
                                check=check,
                                message=message,
                                request=case.as_curl_command(),
                                status=response.status_code,
                                response=_body_text(response),
                            )

            return one  # type: ignore[no-any-return]

        try:
            make(operation, label, per_call)()
        except (Exception, BaseExceptionGroup) as exc:  # e.g. a schema hypothesis cannot generate from
            report.errors[label] = f"{type(exc).__name__}: {exc}"[:500]
        if log is not None:
            log(f"{label}: {report.calls[label]} calls {dict(report.statuses.get(label, {}))}")
    report.seconds = time.perf_counter() - started
    return report


def summary(report: Report) -> str:
    """Counts per operation, then findings and generation errors."""
    lines = [
        f"{sum(report.calls.values())} calls over {len(report.calls)} operations in {report.seconds:.1f}s"
    ]
    for label in sorted(report.calls):
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses[label].items()))
        lines.append(f"  {label:<75} {report.calls[label]:>4}  {statuses}")
    if report.unimplemented:
        lines.append(f"{len(report.unimplemented)} operations answer 501 NOT_IMPLEMENTED (not served yet)")
    lines.append(f"{len(report.findings)} findings")
    lines.extend(str(f) for f in report.findings.values())
    if report.errors:
        lines.append(f"{len(report.errors)} operations could not be generated")
        lines.extend(f"  {k}: {v}" for k, v in report.errors.items())
    return "\n".join(lines)


def as_json(report: Report) -> str:
    """The report as JSON (for archiving a bench run)."""
    return json.dumps(
        {
            "calls": dict(report.calls),
            "statuses": {k: dict(v) for k, v in report.statuses.items()},
            "findings": [vars(f) for f in report.findings.values()],
            "errors": report.errors,
            "unimplemented": sorted(report.unimplemented),
            "seconds": report.seconds,
        },
        indent=2,
    )
