"""Fault drill 7: the mirror goes away, or serves an index whose signature does not verify.

The test repository is served over real HTTP on 127.0.0.1; "unreachable" means the server was
really shut down (connection refused). Outcome: with a warm cache the run carries on offline and
says so; with a cold cache it stops with one error naming what it could not fetch and from where
(exit 3 through the CLI); a badly signed index is refused and nothing from it is cached.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from debrepo_fixture import write_release

from faults.conftest import (
    FAKE_KERNEL,
    KERNEL_PACKAGE,
    SUITE,
    HttpMirror,
    Repo,
    cached_debs,
    client,
    leftovers,
    needs_repo_tools,
    x86_64,
)
from harness.errors import FetchError
from harness.images import fetch_kernel
from harness.paths import project_root

pytestmark = [pytest.mark.faults, needs_repo_tools]


def _kmatrix(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=project_root(),
        env={**os.environ, "COLUMNS": "250", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _cache_files(cache: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


# -- unreachable mirror ---------------------------------------------------------------------------------------


def test_unreachable_mirror_with_warm_cache_works_offline(
    http_mirror: HttpMirror, repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    online = client(http_mirror.url, cache, repo.keyring)
    hello = online.find(SUITE, "amd64", "hello")
    online.unpack(hello)
    fetch_kernel(online, x86_64(), SUITE, cache)
    warm = _cache_files(cache)

    http_mirror.stop()  # the fault: the mirror is down (connection refused)
    # refresh_after_s=0: the run must try the mirror first (as it does once the cached InRelease ages).
    offline = client(http_mirror.url, cache, repo.keyring, refresh_after_s=0)
    with caplog.at_level(logging.WARNING, logger="kmatrix.debian"):
        assert offline.find(SUITE, "amd64", "hello") == hello
        assert (offline.unpack(hello) / "usr/share/hello/greeting").read_text() == "hello 2.0\n"
        kernel = fetch_kernel(offline, x86_64(), SUITE, cache)
    assert kernel.kernel.read_bytes() == FAKE_KERNEL.encode()
    inrelease_url = f"{http_mirror.url}/dists/{SUITE}/InRelease"
    said = [r.getMessage() for r in caplog.records if "using the cached copy" in r.getMessage()]
    assert said and all(inrelease_url in line and "cannot refresh" in line for line in said), caplog.text
    assert _cache_files(cache) == warm  # offline, nothing was re-written or lost


def test_unreachable_mirror_with_cold_cache_is_one_clear_error_exit_3(http_mirror: HttpMirror, tmp_path: Path) -> None:
    http_mirror.stop()
    cache = tmp_path / "cache"
    done = _kmatrix("image", "--arch", "x86_64", env={"KMATRIX_CACHE": str(cache), "KMATRIX_MIRROR": http_mirror.url})
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    url = re.escape(http_mirror.url)
    assert re.fullmatch(
        rf"error: {url}/dists/\w+/InRelease: cannot reach the mirror and nothing is cached \(.*refused.*\)",
        errors[0],
    ), errors[0]
    assert lines[-1].startswith("hint: check the network, or set KMATRIX_MIRROR"), lines
    assert not cached_debs(cache) and not list(cache.rglob("InRelease"))


def test_mirror_gone_before_the_deb_names_the_package_and_url(
    http_mirror: HttpMirror, repo: Repo, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    online = client(http_mirror.url, cache, repo.keyring)
    pkg = online.find(SUITE, "amd64", KERNEL_PACKAGE)  # indexes warm, the .deb not fetched yet
    http_mirror.stop()
    with pytest.raises(FetchError) as caught:
        fetch_kernel(online, x86_64(), SUITE, cache)
    message = str(caught.value)
    assert message.startswith(f"{http_mirror.url}/{pkg.filename}: "), message
    assert "refused" in message and "gave up after 3 attempts" in message
    assert "check the network and that the mirror is up" in (caught.value.hint or "")
    assert not cached_debs(cache) and not leftovers(cache) and not list(cache.glob("kernels/*/.complete"))


# -- an index whose signature does not verify -----------------------------------------------------------------


def _publish_evil_package(repo: Repo) -> None:
    """Add an 'evil' package to the amd64 index and re-sign the Release with a key nobody trusts."""
    folder = repo.root / "dists" / SUITE / "main" / "binary-amd64"
    text = (folder / "Packages").read_bytes() + (
        b"\nPackage: evil\nVersion: 6.6.6\nArchitecture: amd64\nFilename: pool/main/h/hello/hello_2.0-1_amd64.deb\n"
        b"Size: 1\nSHA256: " + b"e" * 64 + b"\n"
    )
    (folder / "Packages").write_bytes(text)
    (folder / "Packages.gz").write_bytes(gzip.compress(text))
    (folder / "Packages.xz").write_bytes(lzma.compress(text))
    write_release(repo.root, repo.other_gpg)


def test_untrusted_signature_on_cold_cache_is_refused_and_nothing_cached(
    http_mirror: HttpMirror, repo: Repo, tmp_path: Path
) -> None:
    _publish_evil_package(repo)
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as caught:
        client(http_mirror.url, cache, repo.keyring).find(SUITE, "amd64", "hello")
    assert f"{http_mirror.url}/dists/{SUITE}/InRelease: signature not valid" in str(caught.value)
    assert "NO_PUBKEY" in str(caught.value)
    assert not [p for p in _cache_files(cache) if p.suffix in ("", ".json", ".deb")], _cache_files(cache)


def test_tampered_inrelease_is_refused(http_mirror: HttpMirror, repo: Repo, tmp_path: Path) -> None:
    inrelease = repo.root / "dists" / SUITE / "InRelease"
    inrelease.write_text(inrelease.read_text().replace("Architectures: amd64", "Architectures: amd64 s390x"))
    with pytest.raises(FetchError, match=r"signature not valid.*BADSIG"):
        client(http_mirror.url, tmp_path / "cache", repo.keyring).packages(SUITE, "amd64")
    assert not list((tmp_path / "cache").rglob("InRelease")) and not list((tmp_path / "cache").rglob("*.json"))


def test_resigned_by_untrusted_key_never_replaces_the_trusted_cache(
    http_mirror: HttpMirror, repo: Repo, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    warm = client(http_mirror.url, cache, repo.keyring)
    warm.unpack(warm.find(SUITE, "amd64", "hello"))
    trusted = _cache_files(cache)
    _publish_evil_package(repo)  # the fault: the mirror now serves an index signed by an unknown key

    refreshing = client(http_mirror.url, cache, repo.keyring, refresh_after_s=0)
    with pytest.raises(FetchError, match=r"signature not valid.*NO_PUBKEY"):
        refreshing.find(SUITE, "amd64", "evil")
    assert _cache_files(cache) == trusted, "the refused InRelease or its index reached the cache"
    assert not any(b"evil" in data for data in _cache_files(cache).values())
    # A later run on the same cache still sees only what the trusted signature vouched for.
    later = client(http_mirror.url, cache, repo.keyring)
    assert "evil" not in later.packages(SUITE, "amd64")
