"""Lab rules: metric values and units, panels, computed status, lot lab status (pure, no database)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from seedline.lab.v1 import lab_pb2

from seedline_server import documents
from seedline_server.api import lab as lab_api  # registers the violation annotator
from seedline_server.api.interceptor import violations_of
from seedline_server.config import Settings
from seedline_server.domain import lab as rules
from seedline_server.domain.errors import (
    DependencyUnavailable,
    DestructionPending,
    InvalidArgument,
    InvalidStateTransition,
    ResourceLocked,
)
from seedline_server.domain.lot import LabStatus
from seedline_server.store import reference

MIGRATION = Path(rules.__file__).resolve().parents[1] / "store" / "migrations" / "versions" / "0004_lab.py"

# Metric ids from the OpenTHC reference.
MOISTURE = "018NY6XC00LM0PXPG4592M8J14"
WATER_ACTIVITY = "018NY6XC00LMHF4266DN94JPPX"
BIFENAZATE = "018NY6XC001CR4C8SJEZQE1NYD"
THC = "018NY6XC00PXG4PH0TXS014VVW"
SALMONELLA = "018NY6XC00LMS96WE6KHKNP52T"
LEMONENE = "018NY6XC00LMWQE1A6K8P10A3E"
ABAMECTIN_OLD = "018NY6XC00LMGZM1K01HQG6A04"
AVERMECTIN = "01FRK0CC1G0SMZT4RW3WR8QB9T"
UNKNOWN = "01JD0000000000000000000000"

U = rules.LabUnit
S = rules.MetricStatus

KNOWN = {
    MOISTURE: rules.MetricInfo(MOISTURE, "Moisture", rules.MetricType.GENERAL, U.PERCENT),
    WATER_ACTIVITY: rules.MetricInfo(
        WATER_ACTIVITY, "Water Activity Rate", rules.MetricType.GENERAL, U.WATER_ACTIVITY
    ),
    BIFENAZATE: rules.MetricInfo(BIFENAZATE, "Bifenazate", rules.MetricType.PESTICIDE, U.PPM),
    THC: rules.MetricInfo(THC, "Activated Total THC", rules.MetricType.CANNABINOID),
    SALMONELLA: rules.MetricInfo(SALMONELLA, "Salmonella", rules.MetricType.MICROBE, U.CFU_PER_GRAM),
    LEMONENE: rules.MetricInfo(LEMONENE, "Limonene", rules.MetricType.TERPENE, U.PERCENT),
    ABAMECTIN_OLD: rules.MetricInfo(ABAMECTIN_OLD, "Abamectin", None, superseded_by=AVERMECTIN),
}

PANEL = rules.Panel(
    "test",
    "*",
    ("*",),
    (
        rules.PanelMetric(THC),
        rules.PanelMetric(MOISTURE, Decimal(15), U.PERCENT),
        rules.PanelMetric(BIFENAZATE, Decimal("0.2"), U.PPM),
        rules.PanelMetric(SALMONELLA, Decimal(0), U.CFU_PER_GRAM),
    ),
)


def rep(
    metric: str, status: rules.MetricStatus, qom: str = "", uom: rules.LabUnit = U.UNSPECIFIED, **kw: str
) -> rules.Reported:
    return rules.Reported(metric, status, uom, qom, **kw)


def passing() -> list[rules.Reported]:
    return [
        rep(THC, S.PASS, "21.4531", U.PERCENT),
        rep(MOISTURE, S.PASS, "11.2", U.PERCENT),
        rep(BIFENAZATE, S.NOT_DETECTED),
        rep(SALMONELLA, S.PASS, "0", U.CFU_PER_GRAM),
    ]


def violations(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict[str, str]:
    return {v.field: v.description for v in exc.value.violations}


def evaluate(reported: list[rules.Reported], panel: rules.Panel = PANEL) -> rules.Evaluation:
    return rules.evaluate(rules.check_metrics(reported, KNOWN), panel)


# --- values, units, bounds -----------------------------------------------------------------------

four_places = st.decimals(min_value=0, max_value=Decimal("999999999999.9999"), places=4, allow_nan=False)


@given(four_places)
def test_values_with_up_to_four_places_parse_exactly(value: Decimal) -> None:
    text = f"{value:f}"
    assert rules.parse_value(text) == value


@given(st.decimals(min_value=0, max_value=10**6, places=9, allow_nan=False), st.integers(5, 9))
def test_more_than_four_places_is_refused(value: Decimal, places: int) -> None:
    # Even "1.00000": the contract allows at most 4 decimal places, trailing zeros included.
    with pytest.raises(ValueError, match="4 decimal places"):
        rules.parse_value(f"{value:.{places}f}")


@pytest.mark.parametrize("text", ["", "-1", "1e3", "1,5", " 1", "1.", ".5", "1234567890123"])
def test_malformed_values_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="plain decimal"):
        rules.parse_value(text)


@given(four_places.filter(lambda v: v <= 1000))
def test_percent_is_accepted_exactly_within_0_to_100(value: Decimal) -> None:
    item = rep(MOISTURE, S.NOT_REQUIRED, f"{value:f}", U.PERCENT)
    if value <= 100:
        (m,) = rules.check_metrics([item], KNOWN)
        assert m.qom == value
    else:
        with pytest.raises(InvalidArgument) as exc:
            rules.check_metrics([item], KNOWN)
        assert "lab_result.metrics[0].qom" in violations(exc)
        assert MOISTURE in violations(exc)["lab_result.metrics[0].qom"]


mass_fractions = st.sampled_from(sorted(rules.MASS_FRACTIONS, key=lambda u: u.value))


@given(four_places, mass_fractions, mass_fractions)
def test_mass_fraction_conversions_are_exact_and_reversible(
    value: Decimal, a: rules.LabUnit, b: rules.LabUnit
) -> None:
    there = rules.convert(value, a, b)
    assert there is not None
    assert rules.convert(there, b, a) == value
    # The bound is the same fraction (100 %) in every unit.
    bound_a, bound_b = rules.upper_bound(a), rules.upper_bound(b)
    assert bound_a is not None
    assert bound_b is not None
    assert (value <= bound_a) == (there <= bound_b)


def test_units_of_other_dimensions_do_not_convert() -> None:
    assert rules.convert(Decimal(1), U.CFU_PER_GRAM, U.PPM) is None
    assert rules.convert(Decimal(1), U.WATER_ACTIVITY, U.PERCENT) is None
    assert rules.convert(Decimal(1), U.CFU_PER_GRAM, U.CFU_PER_GRAM) == 1


@pytest.mark.parametrize(
    "unit", [U.PERCENT, U.MILLIGRAM_PER_GRAM, U.CFU_PER_GRAM, U.WATER_ACTIVITY, U.BOOLEAN]
)
def test_pesticides_need_a_trace_unit(unit: rules.LabUnit) -> None:
    with pytest.raises(InvalidArgument) as exc:
        rules.check_metrics(
            [rep(MOISTURE, S.PASS, "1", U.PERCENT), rep(BIFENAZATE, S.PASS, "0", unit)], KNOWN
        )
    found = violations(exc)
    assert list(found) == ["lab_result.metrics[1].uom"]
    assert f"labMetrics/{BIFENAZATE}" in found["lab_result.metrics[1].uom"]
    assert "ppm" in found["lab_result.metrics[1].uom"]
    assert "ppb" in found["lab_result.metrics[1].uom"]


@pytest.mark.parametrize("unit", [U.PPM, U.PPB, U.MICROGRAM_PER_GRAM, U.MICROGRAM_PER_KILOGRAM])
def test_pesticides_in_ppm_ppb_and_their_equivalents(unit: rules.LabUnit) -> None:
    (m,) = rules.check_metrics([rep(BIFENAZATE, S.PASS, "0.1", unit)], KNOWN)
    assert m.qom == Decimal("0.1")


def test_water_activity_only_for_water_activity_metrics_and_at_most_1() -> None:
    rules.check_metrics([rep(WATER_ACTIVITY, S.PASS, "0.55", U.WATER_ACTIVITY)], KNOWN)
    with pytest.raises(InvalidArgument) as exc:
        rules.check_metrics(
            [
                rep(WATER_ACTIVITY, S.PASS, "1.01", U.WATER_ACTIVITY),
                rep(MOISTURE, S.PASS, "0.5", U.WATER_ACTIVITY),
                rep(LEMONENE, S.NOT_REQUIRED, "0.5", U.CFU_PER_GRAM),
            ],
            KNOWN,
        )
    found = violations(exc)
    assert set(found) == {
        "lab_result.metrics[0].qom",
        "lab_result.metrics[1].uom",
        "lab_result.metrics[2].uom",
    }
    assert "0..1" in found["lab_result.metrics[0].qom"]


def test_unknown_superseded_and_repeated_metrics_are_named() -> None:
    with pytest.raises(InvalidArgument) as exc:
        rules.check_metrics(
            [
                rep(MOISTURE, S.PASS, "10", U.PERCENT),
                rep(UNKNOWN, S.PASS, "1", U.PERCENT),
                rep(ABAMECTIN_OLD, S.PASS, "0.1", U.PPM),
                rep(MOISTURE, S.PASS, "10", U.PERCENT),
            ],
            KNOWN,
        )
    found = violations(exc)
    assert set(found) == {f"lab_result.metrics[{i}].lab_metric" for i in (1, 2, 3)}
    assert f"labMetrics/{UNKNOWN}" in found["lab_result.metrics[1].lab_metric"]
    assert f"labMetrics/{AVERMECTIN}" in found["lab_result.metrics[2].lab_metric"]
    assert "metrics[0]" in found["lab_result.metrics[3].lab_metric"]
    assert exc.value.reason == "VALIDATION_FAILED"


def test_every_problem_is_reported_at_once_with_the_offending_metric() -> None:
    with pytest.raises(InvalidArgument) as exc:
        rules.check_metrics(
            [
                rep(MOISTURE, S.PASS, "100.0001", U.PERCENT, lod="0.5", loq="0.1"),
                rep(THC, S.PASS, "21.12345", U.PERCENT),
                rep(SALMONELLA, S.PASS, "12"),
                rep(SALMONELLA + "X", S.NOT_TESTED),
            ],
            KNOWN,
        )
    found = violations(exc)
    assert MOISTURE in found["lab_result.metrics[0].qom"]
    assert "lab_result.metrics[0].lod" in found  # lod above loq
    assert THC in found["lab_result.metrics[1].qom"]
    assert "lab_result.metrics[2].uom" in found  # a value without a unit
    assert "lab_result.metrics[3].lab_metric" in found


def test_boolean_values_are_0_or_1() -> None:
    rules.check_metrics([rep(SALMONELLA, S.PASS, "0", U.BOOLEAN)], KNOWN)
    with pytest.raises(InvalidArgument) as exc:
        rules.check_metrics([rep(SALMONELLA, S.FAIL, "2", U.BOOLEAN)], KNOWN)
    assert "lab_result.metrics[0].qom" in violations(exc)


# --- the contract's own checks name the metric too (interceptor annotation) ---------------------


def test_contract_violations_under_metrics_name_the_metric() -> None:
    request = lab_pb2.CreateLabResultRequest(
        parent="licenses/01JD0000000000000000000000",
        lab_result=lab_pb2.LabResult(
            lab_license="licenses/01JD0000000000000000000001",
            lots=["licenses/01JD0000000000000000000000/lots/01JD0000000000000000000002"],
            metrics=[
                lab_pb2.LabResultMetric(
                    lab_metric=f"labMetrics/{MOISTURE}", qom="10", uom=U.PERCENT.value, status=S.PASS.value
                ),
                lab_pb2.LabResultMetric(
                    lab_metric=f"labMetrics/{THC}", qom="21.12345", uom=U.PERCENT.value, status=S.PASS.value
                ),
            ],
        ),
    )
    request.lab_result.test_time.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    found = lab_api._name_metrics(request, violations_of(request))
    by_field = {v.field: v.description for v in found}
    assert set(by_field) == {"lab_result.metrics[1].qom"}
    assert by_field["lab_result.metrics[1].qom"].startswith(f"labMetrics/{THC}: ")


# --- computed status ---------------------------------------------------------------------------


def test_a_complete_panel_without_failures_passes() -> None:
    result = evaluate(passing())
    assert result == rules.Evaluation(rules.ResultStatus.PASS, "test")


def test_any_failure_fails() -> None:
    reported = passing()
    reported[1] = rep(MOISTURE, S.FAIL, "17.5", U.PERCENT)
    result = evaluate([*reported, rep(LEMONENE, S.NOT_REQUIRED, "0.8", U.PERCENT)])
    assert result.status is rules.ResultStatus.FAIL
    assert result.failed == (MOISTURE,)
    assert result.missing == ()


def test_a_failure_outside_the_panel_still_fails() -> None:
    reported = [*passing(), rep(LEMONENE, S.FAIL, "2", U.PERCENT, limit="1")]
    assert evaluate(reported).status is rules.ResultStatus.FAIL


@pytest.mark.parametrize("status", [S.NOT_TESTED, S.NOT_REQUIRED, S.NOT_APPLICABLE, None])
def test_a_required_metric_not_passed_makes_it_incomplete(status: rules.MetricStatus | None) -> None:
    reported = [r for r in passing() if r.metric_id != BIFENAZATE]
    if status is not None:
        reported.append(rep(BIFENAZATE, status))
    result = evaluate(reported)
    assert result.status is rules.ResultStatus.INCOMPLETE
    assert result.missing == (f"labMetrics/{BIFENAZATE}",)


def test_limits_apply_across_units_and_the_stricter_one_wins() -> None:
    reported = passing()
    # 150 ppb = 0.15 ppm: within the panel's 0.2 ppm.
    reported[2] = rep(BIFENAZATE, S.PASS, "150", U.PPB)
    assert evaluate(reported).status is rules.ResultStatus.PASS
    # 250 ppb = 0.25 ppm: over it, so a PASS is a contradiction.
    reported[2] = rep(BIFENAZATE, S.PASS, "250", U.PPB)
    with pytest.raises(InvalidArgument) as exc:
        evaluate(reported)
    assert "exceeds the limit 200" in violations(exc)["lab_result.metrics[2].status"]
    assert BIFENAZATE in violations(exc)["lab_result.metrics[2].status"]
    # The lab's own limit 0.1 ppm is stricter than the panel's: 0.15 ppm fails.
    reported[2] = rep(BIFENAZATE, S.FAIL, "0.15", U.PPM, limit="0.1")
    assert evaluate(reported).status is rules.ResultStatus.FAIL


def test_outcomes_that_contradict_the_values_are_refused() -> None:
    reported = passing()
    reported[1] = rep(MOISTURE, S.FAIL, "12", U.PERCENT)  # within 15 %
    reported[2] = rep(BIFENAZATE, S.NOT_DETECTED, "0.3", U.PPM)  # detected over the limit
    reported[3] = rep(SALMONELLA, S.PASS)  # a limited metric passed without its value
    with pytest.raises(InvalidArgument) as exc:
        evaluate(reported)
    found = violations(exc)
    assert set(found) == {
        "lab_result.metrics[1].status",
        "lab_result.metrics[2].status",
        "lab_result.metrics[3].qom",
    }
    assert all(m in found[f] for f, m in zip(sorted(found), (MOISTURE, BIFENAZATE, SALMONELLA), strict=True))


def test_presence_absence_against_a_zero_limit() -> None:
    reported = passing()
    reported[3] = rep(SALMONELLA, S.FAIL, "1", U.BOOLEAN)
    assert evaluate(reported).status is rules.ResultStatus.FAIL
    reported[3] = rep(SALMONELLA, S.PASS, "0", U.BOOLEAN)
    assert evaluate(reported).status is rules.ResultStatus.PASS


@given(
    st.decimals(min_value=0, max_value=100, places=4, allow_nan=False),
    st.decimals(min_value=0, max_value=100, places=4, allow_nan=False),
    st.sampled_from([S.PASS, S.FAIL]),
)
def test_pass_and_fail_are_accepted_exactly_when_the_values_agree(
    qom: Decimal, limit: Decimal, status: rules.MetricStatus
) -> None:
    panel = rules.Panel("p", "*", ("*",), (rules.PanelMetric(MOISTURE, limit, U.PERCENT),))
    item = rep(MOISTURE, status, f"{qom:f}", U.PERCENT)
    agrees = (qom <= limit) == (status is S.PASS)
    if agrees:
        result = evaluate([item], panel)
        assert result.status is (rules.ResultStatus.PASS if status is S.PASS else rules.ResultStatus.FAIL)
    else:
        with pytest.raises(InvalidArgument):
            evaluate([item], panel)


@given(
    st.lists(
        st.sampled_from([S.PASS, S.NOT_DETECTED, S.NOT_TESTED, S.NOT_REQUIRED, S.FAIL]),
        min_size=4,
        max_size=4,
    )
)
def test_overall_status_rules(statuses: list[rules.MetricStatus]) -> None:
    metrics = (THC, MOISTURE, BIFENAZATE, SALMONELLA)
    panel = rules.Panel("p", "*", ("*",), tuple(rules.PanelMetric(m) for m in metrics))
    result = evaluate([rep(m, s) for m, s in zip(metrics, statuses, strict=True)], panel)
    if S.FAIL in statuses:
        assert result.status is rules.ResultStatus.FAIL
    elif all(s in rules.PASSING for s in statuses):
        assert result.status is rules.ResultStatus.PASS
    else:
        assert result.status is rules.ResultStatus.INCOMPLETE
        assert result.missing == tuple(
            f"labMetrics/{m}" for m, s in zip(metrics, statuses, strict=True) if s not in rules.PASSING
        )


def test_a_claimed_status_must_match_the_computed_one() -> None:
    computed = evaluate(passing())
    rules.check_claimed(None, computed)
    rules.check_claimed(rules.ResultStatus.PASS, computed)
    for wrong in (rules.ResultStatus.FAIL, rules.ResultStatus.INCOMPLETE):
        with pytest.raises(InvalidArgument) as exc:
            rules.check_claimed(wrong, computed)
        assert list(violations(exc)) == ["lab_result.status"]
        assert "PASS" in violations(exc)["lab_result.status"]


# --- panels ------------------------------------------------------------------------------------


def _panel_doc(*panels: dict[str, Any]) -> dict[str, Any]:
    return {"panels": list(panels)}


STAR = {"id": "default", "jurisdiction": "*", "product_types": ["*"], "metrics": []}
FLOWER = "018NY6XC00PT0000000000BULK"


def test_the_most_specific_panel_applies() -> None:
    panels = rules.load_panels(
        _panel_doc(
            STAR,
            {
                "id": "co",
                "jurisdiction": "US-CO",
                "metrics": [{"metric": MOISTURE, "limit": "13", "uom": "pct"}],
            },
            {"id": "flower", "jurisdiction": "*", "product_types": [FLOWER], "metrics": []},
            {"id": "co-flower", "jurisdiction": "US-CO", "product_types": [FLOWER], "metrics": []},
        )
    )
    assert panels.select("US-WA", "X" * 26).id == "default"
    assert panels.select("US-WA", FLOWER).id == "flower"
    assert panels.select("US-CO", "X" * 26).id == "co"
    assert panels.select("US-CO", FLOWER).id == "co-flower"
    assert panels.select("US-CO", "X" * 26).metrics == (rules.PanelMetric(MOISTURE, Decimal(13), U.PERCENT),)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "'panels' list"),
        (_panel_doc({**STAR, "jurisdiction": "US-CO"}), "'*' and product type '*'"),
        (_panel_doc(STAR, {**STAR, "id": "other"}), "both cover"),
        (_panel_doc({**STAR, "id": "bad id!"}), ".id"),
        (_panel_doc({**STAR, "jurisdiction": "Colorado"}), ".jurisdiction"),
        (_panel_doc({**STAR, "metrics": [{"metric": "x"}]}), ".metric"),
        (_panel_doc({**STAR, "metrics": [{"metric": MOISTURE, "limit": "15"}]}), ".uom"),
        (_panel_doc({**STAR, "metrics": [{"metric": MOISTURE, "limit": "101", "uom": "pct"}]}), "outside"),
        (_panel_doc({**STAR, "metrics": [{"metric": MOISTURE, "limit": "1.00001", "uom": "pct"}]}), ".limit"),
        (_panel_doc({**STAR, "metrics": [{"metric": MOISTURE}, {"metric": MOISTURE}]}), "twice"),
    ],
)
def test_malformed_panel_files_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(rules.PanelError, match=re_escape(message)):
        rules.load_panels(doc, "panels.json")


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_panels_are_checked_against_the_reference() -> None:
    ok = rules.load_panels(
        _panel_doc({**STAR, "metrics": [{"metric": BIFENAZATE, "limit": "200", "uom": "ppb"}]})
    )
    rules.check_panels_against(ok, KNOWN)
    for metric, uom, message in (
        (UNKNOWN, "ppm", "unknown"),
        (ABAMECTIN_OLD, "ppm", "superseded"),
        (BIFENAZATE, "pct", "cannot be measured"),
    ):
        bad = rules.load_panels(
            _panel_doc({**STAR, "metrics": [{"metric": metric, "limit": "1", "uom": uom}]})
        )
        with pytest.raises(rules.PanelError, match=message):
            rules.check_panels_against(bad, KNOWN)


def _migration() -> Any:
    spec = importlib.util.spec_from_file_location("lab_migration_0004", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_panels_fit_the_shipped_reference() -> None:
    rows = _migration().metric_rows()
    known = {
        r["id"]: rules.MetricInfo(
            r["id"],
            r["display_name"],
            rules.MetricType(r["type"]) if r["type"] else None,
            rules.LabUnit(r["default_uom"]),
            r["superseded_by"],
        )
        for r in rows
    }
    panels = lab_api.load_panels(Settings())
    assert panels.source == str(reference.DEFAULT_LAB_PANELS)
    rules.check_panels_against(panels, known)
    default = panels.select("US-CO", FLOWER)
    assert default.id == "default"
    assert {known[m.metric_id].type for m in default.metrics} >= {
        rules.MetricType.CANNABINOID,
        rules.MetricType.GENERAL,
        rules.MetricType.PESTICIDE,
        rules.MetricType.HEAVY_METAL,
        rules.MetricType.MICROBE,
        rules.MetricType.MYCOTOXIN,
    }
    assert panels.select("US-CO", "018NY6XC00PT3EZZ4GN6105M64").metrics == ()


def test_the_migration_loads_every_reference_entry() -> None:
    rows = _migration().metric_rows()
    published = json.loads(reference.LAB_METRIC_INDEX.read_text())["lab_metric"]
    assert [r["id"] for r in rows] == [m["id"] for m in published]
    by_id = {r["id"]: r for r in rows}
    assert by_id[MOISTURE]["type"] == rules.MetricType.GENERAL.value
    assert by_id[MOISTURE]["metrc_name"] == "Moisture Content"
    assert by_id[MOISTURE]["biotrack_name"] == "1-moisture"
    assert by_id[BIFENAZATE]["cas_number"] == "149877-41-8"
    assert by_id[BIFENAZATE]["default_uom"] == U.PPM.value
    assert by_id[ABAMECTIN_OLD]["superseded_by"] == AVERMECTIN
    assert by_id["018NY6XC00LMQAZZSDXPYH62SS"]["type"] == rules.MetricType.FOREIGN_MATTER.value  # Stems
    assert all(r["type"] for r in rows if not r["superseded_by"])


def test_a_panels_path_setting_replaces_the_shipped_panels(tmp_path: Path) -> None:
    path = tmp_path / "panels.json"
    path.write_text(json.dumps(_panel_doc({**STAR, "id": "site"})))
    assert lab_api.load_panels(Settings(lab_panels_path=path)).select("US-CO", FLOWER).id == "site"
    path.write_text("{not json")
    with pytest.raises(rules.PanelError, match="cannot read"):
        lab_api.load_panels(Settings(lab_panels_path=path))


# --- lot lab status ----------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def cand(n: int, status: rules.ResultStatus, days: int) -> rules.Candidate:
    return rules.Candidate(f"licenses/L/labResults/R{n}", status, T0 + timedelta(days=days), f"R{n}")


def test_the_newest_conclusive_result_governs() -> None:
    fail_old, pass_new = cand(1, rules.ResultStatus.FAIL, 1), cand(2, rules.ResultStatus.PASS, 2)
    incomplete_newest = cand(3, rules.ResultStatus.INCOMPLETE, 3)
    got = rules.lot_lab_status(LabStatus.REQUIRED, [fail_old, pass_new, incomplete_newest], True)
    assert got == (LabStatus.PASSED, pass_new.name)
    assert rules.lot_lab_status(LabStatus.REQUIRED, [fail_old], True) == (LabStatus.FAILED, fail_old.name)
    assert rules.lot_lab_status(LabStatus.REQUIRED, [incomplete_newest], True) == (LabStatus.SAMPLED, "")
    assert rules.lot_lab_status(LabStatus.REQUIRED, [incomplete_newest], False) == (LabStatus.REQUIRED, "")
    assert rules.lot_lab_status(LabStatus.NOT_REQUIRED, [], False) == (LabStatus.NOT_REQUIRED, "")


@given(
    st.lists(st.tuples(st.sampled_from(list(rules.ResultStatus)), st.integers(0, 5)), max_size=6),
    st.booleans(),
)
def test_lot_lab_status_does_not_depend_on_candidate_order(
    items: list[tuple[rules.ResultStatus, int]], pending: bool
) -> None:
    candidates = [cand(n, s, d) for n, (s, d) in enumerate(items)]
    outcomes = {
        rules.lot_lab_status(LabStatus.REQUIRED, list(p), pending)
        for p in itertools.islice(itertools.permutations(candidates), 24)
    }
    assert len(outcomes) == 1


# --- lifecycles --------------------------------------------------------------------------------


def test_sample_lifecycle_errors() -> None:
    rules.check_sample_active(rules.SampleStatus.ACTIVE, "void")
    with pytest.raises(InvalidStateTransition):
        rules.check_sample_active(rules.SampleStatus.TESTED, "void")
    for locked in (rules.SampleStatus.DESTROYED, rules.SampleStatus.VOIDED):
        with pytest.raises(ResourceLocked):
            rules.check_sample_active(locked, "void")
        with pytest.raises(ResourceLocked):
            rules.check_sample_destroyable(locked)
    rules.check_sample_destroyable(rules.SampleStatus.TESTED)


def test_result_lifecycle_errors() -> None:
    rules.check_result_active(rules.ResultState.ACTIVE, "attach")
    with pytest.raises(DestructionPending):
        rules.check_result_active(rules.ResultState.VOID_PENDING, "attach")
    with pytest.raises(ResourceLocked):
        rules.check_result_active(rules.ResultState.VOIDED, "attach")
    rules.check_void_confirmable(rules.ResultState.VOID_PENDING)
    with pytest.raises(InvalidStateTransition):
        rules.check_void_confirmable(rules.ResultState.ACTIVE)
    with pytest.raises(ResourceLocked):
        rules.check_void_confirmable(rules.ResultState.VOIDED)
    rules.check_void_cancellable(rules.ResultState.VOID_PENDING)
    for state in (rules.ResultState.ACTIVE, rules.ResultState.VOIDED):
        with pytest.raises(InvalidStateTransition):
            rules.check_void_cancellable(state)


# --- certificate fetching guards ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "fe80::1", "::ffff:10.0.0.1"],
)
def test_private_addresses_are_not_public(address: str) -> None:
    assert not documents._public(address)


def test_public_addresses_are_public() -> None:
    assert documents._public("93.184.216.34")
    assert documents._public("2606:4700::1111")


def test_fetching_refuses_non_https_and_private_hosts() -> None:
    policy = documents.FetchPolicy(max_bytes=1024, timeout=1)
    with pytest.raises(InvalidArgument) as exc:
        documents.fetch_sync("http://example.com/coa.pdf", policy)
    assert "not an https URL" in exc.value.violations[0].description
    with pytest.raises(InvalidArgument) as exc:
        documents.fetch_sync("https://127.0.0.1:1/coa.pdf", policy)
    assert exc.value.violations[0].field == "uri"
    assert "non-public" in exc.value.violations[0].description
    allowed = documents.FetchPolicy(max_bytes=1024, timeout=1, allow_private=True)
    with pytest.raises(DependencyUnavailable):
        documents.fetch_sync("https://127.0.0.1:1/coa.pdf", allowed)  # nothing listens on port 1
