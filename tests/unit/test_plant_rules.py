"""Plant lifecycle rules: legal phase changes and which record states allow edits."""

from __future__ import annotations

import itertools

import pytest
from seedline.plant.v1 import plant_pb2

from seedline_server.domain.errors import (
    DestructionPending,
    FailedPrecondition,
    InvalidStateTransition,
    ResourceLocked,
)
from seedline_server.domain.plant import INITIAL_PHASES, Phase, State, check_editable, check_phase_change

LEGAL = {
    (Phase.CLONE, Phase.VEGETATIVE),
    (Phase.SEEDLING, Phase.VEGETATIVE),
    (Phase.VEGETATIVE, Phase.FLOWERING),
}
ALL_PAIRS = list(itertools.product(Phase, Phase))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]


def _id(pair: tuple[Phase, Phase]) -> str:
    return f"{pair[0].name}->{pair[1].name}"


def test_phase_and_state_numbers_match_the_contract() -> None:
    for phase in Phase:
        assert plant_pb2.PlantPhase.Value(f"PLANT_PHASE_{phase.name}") == phase.value
    for state in State:
        assert plant_pb2.PlantState.Value(f"PLANT_STATE_{state.name}") == state.value
    # Every non-UNSPECIFIED contract value has a domain counterpart.
    assert {v for v in plant_pb2.PlantPhase.values() if v} == {p.value for p in Phase}
    assert {v for v in plant_pb2.PlantState.values() if v} == {s.value for s in State}


def test_plants_start_as_clones_or_seedlings() -> None:
    assert frozenset({Phase.CLONE, Phase.SEEDLING}) == INITIAL_PHASES


def test_the_parametrization_covers_every_pair() -> None:
    assert len(ALL_PAIRS) == len(Phase) ** 2 == 25
    assert len(ILLEGAL) == 22


@pytest.mark.parametrize("pair", sorted(LEGAL, key=_id), ids=_id)
def test_legal_transitions_are_accepted(pair: tuple[Phase, Phase]) -> None:
    current, new = pair
    assert check_phase_change(current, new) is None


@pytest.mark.parametrize("pair", ILLEGAL, ids=_id)
def test_illegal_transitions_raise_with_from_and_to(pair: tuple[Phase, Phase]) -> None:
    current, new = pair
    with pytest.raises(InvalidStateTransition) as info:
        check_phase_change(current, new)
    err = info.value
    assert err.metadata == {"from": current.name, "to": new.name}
    assert err.reason == "INVALID_STATE_TRANSITION"
    assert isinstance(err, FailedPrecondition)
    assert current.name in err.message
    assert new.name in err.message


@pytest.mark.parametrize(
    ("current", "allowed"),
    [
        (Phase.CLONE, "VEGETATIVE"),
        (Phase.SEEDLING, "VEGETATIVE"),
        (Phase.VEGETATIVE, "FLOWERING"),
        (Phase.FLOWERING, "none"),
        (Phase.HARVESTED, "none"),
    ],
)
def test_refusal_names_the_allowed_next_phases(current: Phase, allowed: str) -> None:
    with pytest.raises(InvalidStateTransition, match=rf"\(allowed next: {allowed}\)"):
        check_phase_change(current, Phase.CLONE)


def test_harvested_is_never_reached_by_a_phase_change() -> None:
    for current in Phase:
        with pytest.raises(InvalidStateTransition):
            check_phase_change(current, Phase.HARVESTED)


def test_no_phase_goes_backwards_or_stays() -> None:
    for current, new in ALL_PAIRS:
        if new.value <= current.value:
            with pytest.raises(InvalidStateTransition):
                check_phase_change(current, new)


def test_active_plants_are_editable() -> None:
    assert check_editable(State.ACTIVE) is None


def test_destroyed_plants_are_locked() -> None:
    with pytest.raises(ResourceLocked) as info:
        check_editable(State.DESTROYED)
    assert info.value.reason == "RESOURCE_LOCKED"
    assert not isinstance(info.value, DestructionPending)


def test_plants_pending_destruction_are_not_editable() -> None:
    with pytest.raises(DestructionPending) as info:
        check_editable(State.DESTRUCTION_PENDING)
    assert info.value.reason == "DESTRUCTION_PENDING"
    assert not isinstance(info.value, ResourceLocked)


def test_check_pending_passes_only_for_a_pending_destruction() -> None:
    from seedline_server.domain.errors import InvalidStateTransition, ResourceLocked
    from seedline_server.domain.plant import check_pending

    check_pending(State.DESTRUCTION_PENDING, "confirm")
    with pytest.raises(InvalidStateTransition, match="nothing to confirm"):
        check_pending(State.ACTIVE, "confirm")
    with pytest.raises(ResourceLocked):
        check_pending(State.DESTROYED, "cancel")
