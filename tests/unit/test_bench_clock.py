"""The bench's clock choice (host) and the guest's warm-up before each measurement."""

from __future__ import annotations

from typing import Any

import pytest

from harness.archs import ARCHS
from harness.bench.run import choose_clock
from harness.errors import KmatrixError
from harness.guest import bench as guest_bench


def test_auto_uses_icount_under_tcg_where_the_target_supports_it() -> None:
    assert choose_clock("auto", ARCHS["aarch64"], "tcg") == (3, "icount shift=3")
    assert choose_clock("icount", ARCHS["s390x"], "tcg") == (5, "icount shift=5")
    assert choose_clock("auto", ARCHS["loongarch64"], "tcg") == (None, "wall")
    assert choose_clock("auto", ARCHS["x86_64"], "kvm") == (None, "wall")
    assert choose_clock("wall", ARCHS["x86_64"], "tcg") == (None, "wall")


@pytest.mark.parametrize(("arch", "accel", "why"), [("loongarch64", "tcg", "does not support -icount"),
                                                     ("x86_64", "kvm", "runs under kvm")])
def test_icount_where_impossible_is_an_error_saying_why(arch: str, accel: str, why: str) -> None:
    with pytest.raises(KmatrixError, match=why) as caught:
        choose_clock("icount", ARCHS[arch], accel)
    assert caught.value.hint and "--clock auto" in caught.value.hint


def test_an_unknown_clock_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(KmatrixError, match="unknown clock 'tsc'") as caught:
        choose_clock("tsc", ARCHS["x86_64"], "tcg")
    assert caught.value.hint == "use one of: auto, icount, wall"


def _fake_storms(monkeypatch: pytest.MonkeyPatch, rates: list[float]) -> list[float]:
    calls: list[float] = []

    def storm_run(storm: str, mix: str, duration_ms: int, subject: Any = None, **_kw: Any) -> dict[str, Any]:
        calls.append(rates[len(calls)])
        return {"syscalls_per_s": calls[-1]}

    monkeypatch.setattr(guest_bench, "storm_run", storm_run)
    return calls


def test_settle_stops_once_three_baselines_in_a_row_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_storms(monkeypatch, [275e3, 304e3, 335e3, 439e3, 440e3, 439e3, 1.0])
    assert guest_bench.settle("storm", "getppid", 1000, tries=8) == [275e3, 304e3, 335e3, 439e3, 440e3, 439e3]
    assert len(calls) == 6


def test_two_close_baselines_are_not_yet_settled(monkeypatch: pytest.MonkeyPatch) -> None:
    # Measured on x86_64 right after boot: two slow storms within 2%, then the real rate.
    _fake_storms(monkeypatch, [214e3, 193e3, 195e3, 205e3, 315e3, 315e3, 315e3, 1.0])
    assert guest_bench.settle("storm", "getppid", 1000, tries=8)[-3:] == [315e3, 315e3, 315e3]


def test_settle_gives_up_after_its_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_storms(monkeypatch, [100.0, 200.0, 100.0, 200.0])
    assert guest_bench.settle("storm", "getppid", 1000, tries=3) == [100.0, 200.0, 100.0]
    _fake_storms(monkeypatch, [100.0, 100.0])
    assert guest_bench.settle("storm", "getppid", 1000, tries=1) == [100.0]


def test_the_ratio_is_the_mean_without_the_extremes() -> None:
    assert guest_bench.trimmed_mean([0.294, 0.143, 0.232, 0.111, 0.135]) == pytest.approx((0.135 + 0.143 + 0.232) / 3)
    assert guest_bench.trimmed_mean([0.2, 0.4]) == pytest.approx(0.3)
    assert guest_bench.trimmed_mean([]) == 0.0


def test_twenty_pairs_drop_four_at_each_end() -> None:
    values = [0.1] * 4 + [0.3] * 12 + [0.9] * 4
    assert guest_bench.trimmed_mean(values) == pytest.approx(0.3)


def test_the_wall_clock_splits_pairs_into_shorter_ones() -> None:
    from harness.bench.run import BenchOptions, wall_clock_sampling

    assert wall_clock_sampling(BenchOptions(repeats=5, duration_ms=1000)) == BenchOptions(repeats=20, duration_ms=250)
    assert wall_clock_sampling(BenchOptions(repeats=1, duration_ms=200)).duration_ms == 100


def test_agreeing_pairs_are_precise_enough_and_bimodal_ones_are_not() -> None:
    assert guest_bench.precise_enough([0.073, 0.071, 0.075, 0.072, 0.074])
    assert not guest_bench.precise_enough([0.178, 0.294, 0.208, 0.286, 0.31])
    assert not guest_bench.precise_enough([0.3])


class _Subject:
    events_per_syscall = 2

    def __init__(self, ratios: list[float]) -> None:
        self.ratios = ratios


def _alternating_storms(monkeypatch: pytest.MonkeyPatch, captured: list[float]) -> list[int]:
    """Baselines of 1000/s; captured storms at the given rates in turn."""
    calls = [0]

    def storm_run(storm: str, mix: str, duration_ms: int, subject: Any = None, **_kw: Any) -> dict[str, Any]:
        if subject is None:
            return {"syscalls_per_s": 1000.0}
        rate = captured[calls[0] % len(captured)] * 1000.0
        calls[0] += 1
        return {"syscalls_per_s": rate, "syscalls": int(rate), "duration_s": 1.0,
                "capture": {"events": int(2 * rate), "drops": 0}}

    monkeypatch.setattr(guest_bench, "storm_run", storm_run)
    return calls


HEADLINE = {"mix": "getppid", "buffer_mib": 8, "sample_every": 1, "pinned": False, "batch": None}


def test_a_headline_takes_more_pairs_only_while_they_disagree(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _alternating_storms(monkeypatch, [0.2, 0.2, 0.2, 0.2, 0.2])
    steady = guest_bench.measure("storm", _Subject([]), HEADLINE, 5, 1000)
    assert len(steady["repeats"]) == 5 and calls[0] == 5
    calls = _alternating_storms(monkeypatch, [0.18, 0.3])
    bimodal = guest_bench.measure("storm", _Subject([]), HEADLINE, 5, 1000)
    assert 5 < len(bimodal["repeats"]) <= 5 * guest_bench.ADAPTIVE_MAX
    assert bimodal["overhead_ratio"] == pytest.approx(0.24, abs=0.01)


def test_a_sweep_measurement_keeps_its_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    _alternating_storms(monkeypatch, [0.18, 0.3])
    sweep = guest_bench.measure("storm", _Subject([]), {**HEADLINE, "buffer_mib": 32}, 5, 1000)
    assert len(sweep["repeats"]) == 5
