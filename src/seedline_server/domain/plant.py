"""Plant lifecycle rules: growth phases and destruction states."""

from __future__ import annotations

import enum

from seedline_server.domain.errors import DestructionPending, InvalidStateTransition, ResourceLocked


class Phase(enum.Enum):
    """Growth phase; values match ``seedline.plant.v1.PlantPhase``."""

    CLONE = 1
    SEEDLING = 2
    VEGETATIVE = 3
    FLOWERING = 4
    HARVESTED = 5


class State(enum.Enum):
    """Record lifecycle; values match ``seedline.plant.v1.PlantState``."""

    ACTIVE = 1
    DESTRUCTION_PENDING = 2
    DESTROYED = 3


INITIAL_PHASES = frozenset({Phase.CLONE, Phase.SEEDLING})

# Legal forward moves through ChangePlantPhase; HARVESTED is reached only by a final raw collect.
_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.CLONE: frozenset({Phase.VEGETATIVE}),
    Phase.SEEDLING: frozenset({Phase.VEGETATIVE}),
    Phase.VEGETATIVE: frozenset({Phase.FLOWERING}),
    Phase.FLOWERING: frozenset(),
    Phase.HARVESTED: frozenset(),
}


def check_phase_change(current: Phase, new: Phase) -> None:
    """Raise unless ``current`` → ``new`` is a legal ChangePlantPhase transition."""
    if new not in _NEXT[current]:
        allowed = ", ".join(sorted(p.name for p in _NEXT[current])) or "none"
        raise InvalidStateTransition(
            f"a plant cannot go from {current.name} to {new.name} (allowed next: {allowed})",
            metadata={"from": current.name, "to": new.name},
        )


def check_pending(state: State, action: str) -> None:
    """Raise unless a destruction is pending (what confirming or cancelling needs)."""
    if state is State.DESTROYED:
        raise ResourceLocked("the plant is destroyed and locked against change")
    if state is not State.DESTRUCTION_PENDING:
        raise InvalidStateTransition(f"nothing to {action}: the plant has no pending destruction")


def check_editable(state: State) -> None:
    """Raise unless the plant may be changed (it is ACTIVE)."""
    if state is State.DESTROYED:
        raise ResourceLocked("the plant is destroyed and locked against change")
    if state is State.DESTRUCTION_PENDING:
        raise DestructionPending("the plant has a pending destruction; confirm or cancel it first")
