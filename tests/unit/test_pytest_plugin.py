"""harness.pytest_plugin: how many xdist workers `-n auto` starts, and per-test run directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import pytest_plugin
from harness.pytest_plugin import auto_num_workers, host_cpus, per_worker, threads_per_guest
from harness.vm import BootSpec

pytest_plugins = ["pytester"]  # runs small pytest sessions with the plugin loaded


def test_a_guest_keeps_its_vcpus_and_qemus_main_thread_busy() -> None:
    assert BootSpec.__dataclass_fields__["smp"].default == 2
    assert threads_per_guest() == 3


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 1), (3, 1), (5, 1), (6, 2), (16, 5), (64, 21)])
def test_auto_num_workers(cpus: int, workers: int) -> None:
    assert auto_num_workers(cpus) == workers


def test_the_hook_divides_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    monkeypatch.setattr(pytest_plugin, "host_cpus", lambda: 12)
    assert pytest_plugin.pytest_xdist_auto_num_workers(pytest.Config.__new__(pytest.Config)) == 4


def test_the_hook_leaves_an_explicit_override_to_xdist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "7")
    assert pytest_plugin.pytest_xdist_auto_num_workers(pytest.Config.__new__(pytest.Config)) is None


def test_host_cpus_honours_the_affinity_mask() -> None:
    if hasattr(os, "sched_getaffinity"):
        assert host_cpus() == len(os.sched_getaffinity(0))
    assert host_cpus() >= 1


def test_the_plugin_loads_without_xdist(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["harness.pytest_plugin"]')
    pytester.makepyfile("def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_run_dir_is_per_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["harness.pytest_plugin"]')
    pytester.makepyfile(
        "from pathlib import Path\n"
        "SEEN = []\n"
        "def test_a(run_dir):\n    SEEN.append(run_dir)\n"
        "def test_b(run_dir, tmp_path):\n    assert run_dir == tmp_path and run_dir not in SEEN\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_auto_under_xdist_uses_the_hook(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makeconftest('pytest_plugins = ["harness.pytest_plugin"]')
    pytester.makepyfile("def test_ok():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "auto", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    workers = auto_num_workers(host_cpus())
    result.stdout.fnmatch_lines([f"*{workers} worker{'s' if workers > 1 else ''}*"])


def test_per_worker_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert per_worker(Path("runs/bench-pytest")) == Path("runs/bench-pytest")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert per_worker(Path("runs/bench-pytest")) == Path("runs/bench-pytest/gw3")
