"""Fault injection shared by the local fakes (METRC, BioTrackTHC, LIMS): the point of a fake.

A fake owns one :class:`Faults` and asks it, for every request of the system it imitates (never
for its own ``/_fake/`` admin endpoints), whether a fault fires: :meth:`Faults.draw`. Tests set
the rules over HTTP through :func:`handle_admin`, mounted by each fake at ``/_fake/faults``:

- ``POST /_fake/faults`` with a JSON object replaces *all* rules (and reseeds the generator)::

      {"seed": 1,
       "rules": [{"method": "POST", "path_prefix": "/plantbatches/v2/plantings",
                  "mode": "error500", "probability": 0.05, "count": null, "delay_s": 2.0}]}

  ``method`` (optional; ``null`` or ``"*"`` = any) is compared case-insensitively;
  ``path_prefix`` (default ``"/"``) is matched against the request path without its query;
  ``probability`` (default 1.0) is drawn from a ``random.Random(seed)`` (``seed`` default 0), so a
  run with the same requests in the same order fires the same faults; ``count`` (default
  ``null`` = unlimited) caps how many times the rule fires; ``delay_s`` (default 0) is the stall
  of the time-based modes. Rules are tried in order; every matching rule that still may fire
  takes one draw, and the first that fires wins. Unknown keys or values are refused with 400.
  The answer is :meth:`Faults.summary`.
- ``DELETE /_fake/faults`` removes every rule (fired counters are kept); ``GET /_fake/faults``
  returns :meth:`Faults.summary`.

Modes (:data:`MODES`); what the *fake* must do when a rule fires:

- ``error500``: answer 500 without applying anything.
- ``timeout``: stall ``delay_s``, then drop the connection without an answer; nothing applied.
- ``slow``: stall ``delay_s``, then handle the request normally.
- ``apply_then_500``: handle (apply) the request, then answer 500 instead of its real answer.
- ``apply_then_timeout``: handle (apply) it, stall ``delay_s``, then drop the connection.
- ``partial``: for a request whose body is an array of rows, reject the rows
  :func:`partial_rejected_rows` names (answer 400 listing them) and apply the others. A fake
  passes ``eligible`` to :meth:`Faults.draw` so this mode never fires on other requests.
- ``rate_limit``: answer 429 with ``Retry-After`` (:func:`retry_after`) without applying.

Helpers for the fakes: :func:`drop_connection` (closes the connection without an answer) and
:func:`retry_after`.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

__all__ = [
    "MODES",
    "FaultRule",
    "Faults",
    "drop_connection",
    "handle_admin",
    "partial_rejected_rows",
    "retry_after",
]

MODES: Final = frozenset(
    {"error500", "timeout", "slow", "apply_then_500", "apply_then_timeout", "partial", "rate_limit"}
)
"""Every fault mode; a fake may accept only a subset (``Faults(modes=...)``)."""

_RULE_KEYS: Final = frozenset({"method", "path_prefix", "mode", "probability", "count", "delay_s"})


@dataclass
class FaultRule:
    """One rule: which requests it matches, what happens, how often.

    Attributes:
        mode: One of :data:`MODES`.
        method: HTTP method (upper case), or None for any.
        path_prefix: The request path must start with it.
        probability: Chance (0-1) that a matching request fires the rule.
        count: Most times the rule fires; None for no limit.
        delay_s: Stall of the ``timeout``, ``slow``, ``apply_then_timeout`` modes; the
            ``Retry-After`` of ``rate_limit``.
        fired: Times it has fired so far.

    """

    mode: str
    method: str | None = None
    path_prefix: str = "/"
    probability: float = 1.0
    count: int | None = None
    delay_s: float = 0.0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to ``method path`` and may still fire."""
        if self.count is not None and self.fired >= self.count:
            return False
        if self.method is not None and self.method != method.upper():
            return False
        return path.startswith(self.path_prefix)

    def to_json(self) -> dict[str, Any]:
        """The rule as JSON, with its ``fired`` counter."""
        return {
            "method": self.method,
            "path_prefix": self.path_prefix,
            "mode": self.mode,
            "probability": self.probability,
            "count": self.count,
            "delay_s": self.delay_s,
            "fired": self.fired,
        }


def _number(rule: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = rule.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"rule {key} must be a number in [{low}, {high}], not {value!r}")
    return float(value)


def _rule(raw: Any, modes: frozenset[str]) -> FaultRule:
    if not isinstance(raw, dict):
        raise ValueError("each rule must be a JSON object")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise ValueError(f"unknown rule keys: {sorted(unknown)}")
    mode = raw.get("mode")
    if mode not in modes:
        raise ValueError(f"rule mode must be one of {sorted(modes)}, not {mode!r}")
    method = raw.get("method")
    if method is not None and (not isinstance(method, str) or not method):
        raise ValueError("rule method must be a string or null")
    prefix = raw.get("path_prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError("rule path_prefix must be a string starting with '/'")
    count = raw.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError("rule count must be a non-negative integer or null")
    return FaultRule(
        mode=mode,
        method=None if method in (None, "*") else method.upper(),
        path_prefix=prefix,
        probability=_number(raw, "probability", 1.0, 0.0, 1.0),
        count=count,
        delay_s=_number(raw, "delay_s", 0.0, 0.0, 3600.0),
    )


class Faults:
    """The fault rules of one fake and a seeded generator to draw them.

    Args:
        modes: The modes this fake implements (default: all of :data:`MODES`).

    """

    def __init__(self, *, modes: Iterable[str] = MODES) -> None:
        self.modes = frozenset(modes)
        if not self.modes <= MODES:
            raise ValueError(f"unknown modes: {sorted(self.modes - MODES)}")
        self.rules: list[FaultRule] = []
        self.seed = 0
        self.fired: Counter[str] = Counter()
        self._rng = random.Random(0)  # noqa: S311 - reproducible test faults, not cryptography

    def configure(self, spec: Any) -> list[FaultRule]:
        """Replace every rule with those of ``spec`` and reseed (the JSON of ``POST /_fake/faults``).

        Args:
            spec: ``{"seed": int | null, "rules": [rule, ...]}``.

        Returns:
            The new rules.

        Raises:
            ValueError: If ``spec`` is malformed; the old rules are kept then.

        """
        if not isinstance(spec, dict):
            raise ValueError("the fault specification must be a JSON object")
        unknown = set(spec) - {"seed", "rules"}
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        seed = spec.get("seed", 0)
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError("seed must be an integer")
        raw_rules = spec.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ValueError("rules must be an array")
        rules = [_rule(r, self.modes) for r in raw_rules]
        self.rules, self.seed = rules, seed
        self._rng = random.Random(seed)  # noqa: S311
        return rules

    def clear(self) -> None:
        """Remove every rule (the ``fired`` counters by mode stay)."""
        self.rules = []

    def reset(self) -> None:
        """Remove every rule and forget the counters."""
        self.rules = []
        self.fired.clear()
        self._rng = random.Random(self.seed)  # noqa: S311

    def draw(
        self, method: str, path: str, *, eligible: Callable[[FaultRule], bool] | None = None
    ) -> FaultRule | None:
        """The rule that fires for this request, if any (its ``fired`` count is incremented).

        Args:
            method: The request method.
            path: The request path, without the query string.
            eligible: Skips (without a draw) rules it returns False for, e.g. ``partial`` rules
                on requests without an array body.

        Returns:
            The first matching rule whose draw succeeded, or None.

        """
        for rule in self.rules:
            if not rule.matches(method, path) or (eligible is not None and not eligible(rule)):
                continue
            if self._rng.random() < rule.probability:
                rule.fired += 1
                self.fired[rule.mode] += 1
                return rule
        return None

    def summary(self) -> dict[str, Any]:
        """The rules (with their fired counts), the seed and fired counts by mode."""
        return {
            "seed": self.seed,
            "rules": [r.to_json() for r in self.rules],
            "fired": dict(self.fired),
        }


def partial_rejected_rows(rows: int) -> list[int]:
    """The 0-based rows a ``partial`` fault rejects: every odd index (the 2nd, 4th, ... row).

    A one-row body has no second row, so its only row is rejected.

    Args:
        rows: How many rows the request body has.

    Returns:
        The rejected row indexes, ascending.

    """
    if rows == 1:
        return [0]
    return list(range(1, rows, 2))


def retry_after(rule: FaultRule) -> str:
    """The ``Retry-After`` header of a ``rate_limit`` fault: ``delay_s`` rounded up, at least 1."""
    return str(max(1, math.ceil(rule.delay_s)))


async def drop_connection(request: web.Request, delay_s: float = 0.0) -> web.Response:
    """Stall ``delay_s`` then close the connection without an answer.

    Return the result from the handler: aiohttp cannot send it on the closed connection, so the
    client sees the connection cut ("server disconnected without sending a response") or its own
    timeout if that is shorter than ``delay_s``.

    Args:
        request: The request whose connection to drop.
        delay_s: Seconds to wait first.

    Returns:
        A placeholder response that never reaches the client.

    """
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=500)


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


async def handle_admin(faults: Faults, request: web.Request) -> web.Response:
    """Serve ``/_fake/faults``: POST replaces the rules, DELETE clears them, GET shows them.

    Args:
        faults: The fake's rules.
        request: The admin request.

    Returns:
        200 with :meth:`Faults.summary`, 400 ``{"Message": ...}`` for a malformed specification,
        405 for other methods.

    """
    if request.method == "POST":
        try:
            faults.configure(json.loads(await request.read() or b"null"))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return _json(400, {"Message": f"invalid fault specification: {exc}"})
    elif request.method == "DELETE":
        faults.clear()
    elif request.method != "GET":
        return _json(405, {"Message": f"{request.method} is not supported on {request.path}"})
    return _json(200, faults.summary())
