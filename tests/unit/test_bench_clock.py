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
