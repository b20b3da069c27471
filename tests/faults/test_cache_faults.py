"""Fault drill 6: a damaged, read-only or shared cache.

Each fault is made for real on a real cache: a .deb cut short, a byte flipped in an extracted kernel
and in the .deb it came from, the cache on a read-only mount, two processes filling one cache at
once. Outcome: damage is found by checksum and repaired from the verified source, never handed on
(a kernel is never booted from it); a cache that cannot be written is one clear error.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from faults.conftest import (
    BIG_TEXT,
    FAKE_KERNEL,
    KERNEL_FILE,
    KERNEL_PACKAGE,
    SUITE,
    UNREACHABLE_MIRROR,
    HostSeed,
    HttpMirror,
    Repo,
    cached_debs,
    client,
    kmatrix_image,
    leftovers,
    mounted,
    needs_repo_tools,
    sha256,
    tmpfs,
    x86_64,
)
from harness import debian, images
from harness.debian import Package
from harness.errors import CacheError, FetchError
from harness.images import fetch_kernel
from harness.paths import project_root

pytestmark = [pytest.mark.faults, needs_repo_tools]


def _flip_byte(path: Path) -> None:
    """Flip one bit in the middle of the file, in place (same size, same mtime class of damage)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _cached_deb_of(cache: Path, pkg: Package) -> Path:
    # Found on disk, not through repo.fetch (which would check and repair it first).
    (deb,) = [p for p in cached_debs(cache) if p.name == Path(pkg.filename).name]
    return deb


# -- a truncated .deb -----------------------------------------------------------------------------------


def drill_truncated_deb(repo: Repo, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    online = client(repo.url, cache, repo.keyring)
    pkg = online.find(SUITE, "amd64", "bigpkg")
    good = online.fetch(pkg).read_bytes()
    deb = _cached_deb_of(cache, pkg)
    with deb.open("r+b") as handle:  # the fault: the cached .deb loses its second half
        handle.truncate(len(good) // 2)

    later = client(repo.url, cache, repo.keyring)  # a later run on the same cache
    with caplog.at_level(logging.WARNING, logger="kmatrix.debian"):
        fetched = later.fetch(pkg)
    assert fetched.read_bytes() == good, "a truncated cached .deb would have been used"
    assert "does not match its index entry" in caplog.text
    tree = later.unpack(pkg)
    assert (tree / "usr/share/big/blob").read_text() == BIG_TEXT
    assert not leftovers(cache)


def test_truncated_deb_is_fetched_again(repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    drill_truncated_deb(repo, tmp_path / "cache", caplog)


def test_truncated_deb_with_the_mirror_gone_is_an_error_not_a_package(repo: Repo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    online = client(repo.url, cache, repo.keyring)
    pkg = online.find(SUITE, "amd64", "bigpkg")
    deb = online.fetch(pkg)
    os.truncate(deb, pkg.size // 2)
    mirror_url = f"{repo.url}/{pkg.filename}"
    repo.root.rename(repo.root.with_name("gone"))  # the mirror is unreachable now
    with pytest.raises(FetchError) as caught:
        client(repo.url, cache, repo.keyring).unpack(pkg)
    assert mirror_url in str(caught.value) and "3 attempts" in str(caught.value)
    assert not deb.exists(), "the truncated .deb must not stay in the cache"
    assert not [p for p in cache.rglob("unpacked/*bigpkg*") if p.is_dir()], "nothing may be unpacked from it"


def test_drill_has_teeth_without_the_deb_checksum(
    repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the cached .deb's sha256 check switched off, the truncation drill must fail."""
    real = debian._file_digest
    pkg = client(repo.url, tmp_path / "probe", repo.keyring).find(SUITE, "amd64", "bigpkg")

    def trusting(path: Path) -> tuple[str, int]:
        if path.suffix == ".deb" and "debs" in path.parts:  # the cached file: claim it still matches
            return pkg.sha256, pkg.size
        return real(path)

    monkeypatch.setattr(debian, "_file_digest", trusting)
    with pytest.raises(AssertionError, match=r"truncated cached \.deb would have been used"):
        drill_truncated_deb(repo, tmp_path / "cache", caplog)


# -- a flipped byte in a cached kernel ----------------------------------------------------------------------


def drill_flipped_kernel(repo: Repo, cache: Path, where: str, caplog: pytest.LogCaptureFixture) -> None:
    """Flip a byte in the extracted kernel ("vmlinuz"), its cached .deb ("deb") or both; fetch again."""
    online = client(repo.url, cache, repo.keyring)
    first = fetch_kernel(online, x86_64(), SUITE, cache)
    assert first.kernel.read_bytes() == FAKE_KERNEL.encode()
    pkg = online.find(SUITE, "amd64", KERNEL_PACKAGE)
    deb = _cached_deb_of(cache, pkg)
    good_deb = deb.read_bytes()
    if where in ("vmlinuz", "both"):
        _flip_byte(first.kernel)
    if where in ("deb", "both"):
        _flip_byte(deb)

    later = client(repo.url, cache, repo.keyring)  # the next run, about to boot this kernel
    with caplog.at_level(logging.WARNING):
        kernel = fetch_kernel(later, x86_64(), SUITE, cache)
    assert kernel.kernel.read_bytes() == FAKE_KERNEL.encode(), "a corrupted cached kernel would be booted"
    assert kernel.kernel.name == Path(KERNEL_FILE).name and kernel.release == "6.1.0-99-amd64"
    if where != "deb":
        assert "does not match the sha256 recorded when it was extracted" in caplog.text
    # The .deb is checked whenever the kernel is extracted from it: damaged, it is fetched again.
    with caplog.at_level(logging.WARNING):
        later.unpack(pkg)
    assert deb.read_bytes() == good_deb
    if where != "vmlinuz":
        assert "does not match its index entry" in caplog.text
    assert not leftovers(cache)


@pytest.mark.parametrize("where", ["vmlinuz", "deb", "both"])
def test_flipped_byte_in_cached_kernel_is_never_booted(
    repo: Repo, tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    drill_flipped_kernel(repo, tmp_path / "cache", where, caplog)


def test_flipped_kernel_is_reextracted_offline_from_the_verified_deb(
    repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    first = fetch_kernel(client(repo.url, cache, repo.keyring), x86_64(), SUITE, cache)
    _flip_byte(first.kernel)
    (first.kernel.parent / f"config-{first.release}").write_text("CONFIG_BPF=n\n")  # and the config too
    repo.root.rename(repo.root.with_name("gone"))  # the mirror is unreachable: only the cache can heal it
    kernel = fetch_kernel(client(repo.url, cache, repo.keyring, refresh_after_s=0), x86_64(), SUITE, cache)
    assert kernel.kernel.read_bytes() == FAKE_KERNEL.encode()
    assert kernel.config.get("CONFIG_BPF") == "y"


@pytest.mark.parametrize("flipped", [False, True])
def test_kernel_cached_before_checksums_is_checked_against_its_deb(repo: Repo, tmp_path: Path, flipped: bool) -> None:
    """A cache written by an older kmatrix (marker without checksums) is verified against the .deb once."""
    cache = tmp_path / "cache"
    first = fetch_kernel(client(repo.url, cache, repo.keyring), x86_64(), SUITE, cache)
    marker = first.kernel.parent.parent / ".complete"
    marker.write_text(json.dumps({"package": KERNEL_PACKAGE, "version": "6.1.99-1"}))  # the old marker
    if flipped:
        _flip_byte(first.kernel)
    inode = first.kernel.stat().st_ino
    kernel = fetch_kernel(client(repo.url, cache, repo.keyring), x86_64(), SUITE, cache)
    assert kernel.kernel.read_bytes() == FAKE_KERNEL.encode()
    assert json.loads(marker.read_text())["files"][KERNEL_FILE] == sha256(kernel.kernel)
    # Intact, the files stay in place (a guest may be booting from them); damaged, they are replaced.
    assert (kernel.kernel.stat().st_ino == inode) is not flipped


def test_drill_has_teeth_without_the_kernel_checksum(
    repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the extracted kernel's checksums ignored (the old `.complete` check), the drill must fail."""
    monkeypatch.setattr(images, "_boot_files_intact", lambda dest, _pkg: (dest / ".complete").exists())
    with pytest.raises(AssertionError, match="corrupted cached kernel would be booted"):
        drill_flipped_kernel(repo, tmp_path / "cache", "vmlinuz", caplog)


# -- a read-only cache --------------------------------------------------------------------------------------


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


def test_read_only_cache_directory_is_one_clear_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        done = _kmatrix(
            "image", "--arch", "x86_64", env={"KMATRIX_CACHE": str(ro), "KMATRIX_MIRROR": UNREACHABLE_MIRROR}
        )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[0] == f"error: cache directory {ro} is not writable (it is on a read-only file system)"
    assert lines[1:] == ["hint: set KMATRIX_CACHE to a writable directory"]
    assert "Traceback" not in done.stderr


def test_read_only_warm_cache_is_a_cache_error_naming_the_directory(repo: Repo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    warm = client(repo.url, cache, repo.keyring)
    fetch_kernel(warm, x86_64(), SUITE, cache)
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    with mounted(cache, "--bind", "-o", "ro", str(cache)):
        ro_client = client(repo.url, cache, repo.keyring)
        for attempt in (
            lambda: ro_client.find(SUITE, "amd64", "hello"),
            lambda: fetch_kernel(ro_client, x86_64(), SUITE, cache),
        ):
            with pytest.raises(CacheError) as caught:
                attempt()
            message = str(caught.value)
            assert "\n" not in message and "is not writable (Read-only file system)" in message, message
            assert message.startswith(f"cache directory {cache}/"), message
            assert "KMATRIX_CACHE" in (caught.value.hint or "") and "read-write" in (caught.value.hint or "")
            assert caught.value.exit_code == 3
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before


# -- two runs sharing one fresh cache -----------------------------------------------------------------------

_CHILD = r"""
import hashlib, json, sys
from pathlib import Path
from harness.archs import get_arch
from harness.debian import DebianRepo
from harness.images import fetch_kernel

url, cache, keyring = sys.argv[1:4]
repo = DebianRepo(url, Path(cache), [Path(keyring)], retry_delay_s=0, timeout_s=60)
digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
out = {}
for name in sys.argv[4:]:
    pkg = repo.find("kmxtest", "amd64", name)
    tree = repo.unpack(pkg)
    deb = repo.fetch(pkg)
    files = {str(p.relative_to(tree)): digest(p) for p in sorted(tree.rglob("*")) if p.is_file() and not p.is_symlink()}
    out[name] = {"deb": str(deb), "deb_sha256": digest(deb), "index_sha256": pkg.sha256, "files": files}
kernel = fetch_kernel(repo, get_arch("x86_64"), "kmxtest", Path(cache))
out["kernel"] = {"path": str(kernel.kernel), "sha256": digest(kernel.kernel)}
print(json.dumps(out, sort_keys=True))
"""


def test_two_processes_fill_one_fresh_cache(repo: Repo, http_mirror: HttpMirror, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    names = ["bigpkg", KERNEL_PACKAGE, "hello", "libgreet", "greet-data"]
    argv = [sys.executable, "-c", _CHILD, http_mirror.url, str(cache), str(repo.keyring), *names]
    env = {**os.environ, "PYTHONPATH": str(project_root())}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in "ab"]
    results = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    first, second = (json.loads(out) for out, _err in results)
    assert first == second, "two runs sharing a cache saw different content"
    for name in names:
        assert first[name]["deb_sha256"] == first[name]["index_sha256"]
    assert first["bigpkg"]["files"]["usr/share/big/blob"] == sha256_text(BIG_TEXT)
    assert first["kernel"]["sha256"] == sha256_text(FAKE_KERNEL)
    # The cache itself is intact: one copy of each .deb, each matching its index, nothing half-done.
    assert len(cached_debs(cache)) == len(names)
    for deb in cached_debs(cache):
        assert any(sha256(deb) == first[n]["index_sha256"] for n in names), deb
    assert not leftovers(cache)
    marker = json.loads(next(cache.glob("kernels/*/.complete")).read_text())
    assert marker["files"][KERNEL_FILE] == sha256_text(FAKE_KERNEL)


def sha256_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


# -- a flipped byte in a cached guest image -----------------------------------------------------------------


def drill_flipped_guest_image(host_seed: HostSeed, cache: Path, prelude: str = "") -> None:
    """Build a real guest image, flip a byte in the cached file, ask for it again."""
    shutil.copytree(host_seed.seed, cache)
    out, err = kmatrix_image(host_seed.source, cache, host_seed.arch, prelude).communicate(timeout=1800)
    assert out, err
    image = Path(json.loads(out)[0]["path"])
    good = image.read_bytes()
    _flip_byte(image)  # the fault

    out, err = kmatrix_image(host_seed.source, cache, host_seed.arch, prelude).communicate(timeout=1800)
    assert out, err
    again = json.loads(out)[0]
    assert Path(again["path"]).read_bytes() == good, "a corrupted cached guest image would be booted"
    assert again["built"] is True
    assert "does not match its recorded sha256; building it again" in err, err


@pytest.mark.slow
def test_flipped_byte_in_cached_guest_image_is_rebuilt(host_seed: HostSeed, tmp_path: Path) -> None:
    drill_flipped_guest_image(host_seed, tmp_path / "cache")


@pytest.mark.slow
def test_drill_has_teeth_without_the_guest_image_checksum(host_seed: HostSeed, tmp_path: Path) -> None:
    """With the cached image trusted because it exists (the old check), the drill must fail."""
    trusting = "import harness.rootfs as rootfs\nrootfs._image_intact = lambda image: image.exists()"
    with pytest.raises(AssertionError, match="corrupted cached guest image would be booted"):
        drill_flipped_guest_image(host_seed, tmp_path / "cache", trusting)
