"""Retries of unary calls that honour the server's ``google.rpc.RetryInfo``.

A failed call is tried again when all of these hold:

* its code is one of :attr:`RetryPolicy.codes` (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED), and it
  is not an ``ETAG_MISMATCH`` (sending the same stale etag again cannot succeed);
* repeating it is safe: the method only reads (``Get``, ``List``, ``Query``, ``Trace``, ``Ping``,
  ``Watch``: exactly the contract's HTTP GET methods, as a unit test checks), or the request
  carries a ``request_id`` (the server answers a repeat with the first result), or the server
  refused it as ``RATE_LIMITED``, which it decides before running the call;
* attempts remain (:attr:`RetryPolicy.max_attempts`).

It then waits for the ``RetryInfo.retry_delay`` the error carries (the server's rate limiter
sends it), or else for a jittered exponential backoff, and tries again. A server delay longer
than :attr:`RetryPolicy.max_delay` is not waited for: the error is raised at once.
"""

from __future__ import annotations

import copy
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from seedline_client.auth import new_request_id
from seedline_client.errors import SeedlineError, from_rpc_error

__all__ = ["RequestIdInterceptor", "RetryInterceptor", "RetryPolicy", "is_read_method"]

_READ = re.compile(r"^/[\w.]+/(Get|List|Query|Trace|Ping|Watch)[A-Z]")
_RETRYABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)


def is_read_method(method: str) -> bool:
    """Whether a full method name (``/seedline.x.v1.XService/GetY``) only reads."""
    return _READ.match(method) is not None


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a failed call again.

    Attributes:
        max_attempts: Tries in all, the first included (1 disables retries).
        initial_backoff: Seconds before the first retry when the server gives no delay.
        max_backoff: Cap of the exponential backoff, seconds.
        multiplier: Growth of the backoff per attempt.
        max_delay: The longest server-advertised delay the client will sleep, seconds.
        codes: Status codes worth retrying.

    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    codes: frozenset[grpc.StatusCode] = field(default=_RETRYABLE)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < self.initial_backoff or self.multiplier < 1:
            raise ValueError("need 0 <= initial_backoff <= max_backoff and multiplier >= 1")

    def is_safe(self, method: str, request: Any, error: SeedlineError) -> bool:
        """Whether sending ``request`` again cannot apply a change twice."""
        return (
            is_read_method(method)
            or bool(getattr(request, "request_id", ""))
            or error.reason == "RATE_LIMITED"
        )

    def delay(
        self, attempt: int, method: str, request: Any, error: SeedlineError, jitter: float
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to give up.

        Args:
            attempt: The attempt that just failed (1 for the first).
            method: The full method name.
            request: The request sent.
            error: How it failed.
            jitter: A number in [0, 1) spreading the backoff (full jitter).

        Returns:
            The delay, or ``None`` when the call must not or cannot be retried.

        """
        if attempt >= self.max_attempts or error.code() not in self.codes:
            return None
        if error.reason == "ETAG_MISMATCH" or not self.is_safe(method, request, error):
            return None
        advised = error.retry_delay
        if advised is not None:
            seconds = advised.total_seconds()
            return seconds if 0 <= seconds <= self.max_delay else None
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return ceiling * jitter


class RetryInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Retries unary calls as a :class:`RetryPolicy` says (streams are never retried).

    Args:
        policy: When and how long to wait.
        sleep: Waits that many seconds (injectable for tests).
        jitter: Returns a number in [0, 1) (injectable for tests).

    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._jitter = jitter

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Runs the call, again after a failure while the policy allows."""
        attempt = 1
        while True:
            outcome = continuation(client_call_details, request)
            failure = outcome.exception()
            if not isinstance(failure, grpc.RpcError):
                return outcome
            error = from_rpc_error(failure)
            wait = self.policy.delay(attempt, client_call_details.method, request, error, self._jitter())
            if wait is None:
                return outcome
            self._sleep(wait)
            attempt += 1


class RequestIdInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Gives a mutation whose ``request_id`` is empty a fresh one, so its retries are safe.

    It runs outside :class:`RetryInterceptor`: every attempt of one call carries the same id, and
    the server answers a repeat with the first result. The caller's message is not changed.
    """

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        """Fills ``request_id`` on a copy of the request when it has the field and it is empty."""
        if getattr(request, "request_id", None) == "" and not is_read_method(client_call_details.method):
            request = copy.copy(request)
            request.request_id = new_request_id()
        return continuation(client_call_details, request)
