"""Fault drill 8: the disk fills up while the cache is being written.

The cache really sits on a small tmpfs (mounted here, as root; skipped with the reason otherwise).
Outcome: one KmatrixError (CacheError) whose message names the path and says the disk is full, no
half-written file or tree left that a later run would trust, and once there is room a later run
on the same cache builds the complete, correct artifact.

The first drills use the test repository (a .deb that does not fit while downloading, a tree that
does not fit while unpacking, a kernel that does not fit while extracting). The last builds a real
riscv64 guest image with `kmatrix image` from the .debs already in this host's kmatrix cache (no
network: the mirror is an unreachable address), first on a cache too small for it, then, after
growing the same tmpfs, with two `kmatrix image` processes at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest
from debian.debfile import DebFile

from faults.conftest import (
    BIG_TEXT,
    FAKE_KERNEL,
    KERNEL_PACKAGE,
    SUITE,
    HostSeed,
    Repo,
    cached_debs,
    can_mount,
    client,
    kmatrix_image,
    leftovers,
    needs_repo_tools,
    remount,
    size_of,
    tmpfs,
    x86_64,
)
from harness import cpio
from harness.errors import CacheError, KmatrixError
from harness.images import fetch_kernel
from harness.rootfs import load_recipe

pytestmark = [pytest.mark.faults]

KIB = 1024


def _kib(nbytes: int) -> str:
    return f"{-(-nbytes // KIB)}k"


def _assert_disk_full(error: KmatrixError, mount: Path, names: str) -> None:
    message = str(error)
    assert isinstance(error, CacheError) and error.exit_code == 3
    assert message.startswith(f"disk full: no space left on the file system holding {mount}/"), message
    assert names in message and "\n" not in message, message
    assert "KMATRIX_CACHE" in (error.hint or "")


def _trees_match_their_debs(cache: Path) -> int:
    """Every unpacked tree the cache marks complete holds exactly its .deb's files; returns how many."""
    checked = 0
    for marker in cache.rglob("unpacked/*.sha256"):
        tree = marker.with_suffix("")
        sha = marker.read_text().strip()
        (deb,) = list((tree.parent.parent / "debs" / sha[:16]).glob("*.deb"))
        assert hashlib.sha256(deb.read_bytes()).hexdigest() == sha, deb
        expected: dict[str, str] = {}
        with DebFile(str(deb)) as debfile:
            archive: tarfile.TarFile = debfile.data.tgz()
            for member in archive:
                if member.isfile() or member.islnk():
                    handle = archive.extractfile(member)
                    assert handle is not None
                    expected[os.path.normpath(member.name)] = hashlib.sha256(handle.read()).hexdigest()
        found = {
            str(p.relative_to(tree)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in tree.rglob("*")
            if p.is_file() and not p.is_symlink()
        }
        assert found == expected, f"{tree} does not hold what {deb.name} holds"
        checked += 1
    return checked


# -- the test repository: a .deb, a tree and a kernel that do not fit ---------------------------------------


@needs_repo_tools
def test_deb_download_fills_the_disk(repo: Repo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with tmpfs(tmp_path / "small", "1m") as cache:
        online = client(repo.url, cache, repo.keyring)
        pkg = online.find(SUITE, "amd64", "bigpkg")
        assert pkg.size > 2 << 20  # bigger than the whole file system
        with caplog.at_level(logging.WARNING), pytest.raises(CacheError) as caught:
            online.fetch(pkg)
        _assert_disk_full(caught.value, cache, Path(pkg.filename).name)
        assert "attempt" not in caplog.text, "a full disk is not a network failure to retry"
        assert not cached_debs(cache) and not leftovers(cache)

        remount(cache, "size=16m")  # room again: the same cache, a later run
        later = client(repo.url, cache, repo.keyring)
        assert (later.unpack(pkg) / "usr/share/big/blob").read_text() == BIG_TEXT
        assert _trees_match_their_debs(cache) == 1 and not leftovers(cache)


@needs_repo_tools
def test_unpack_fills_the_disk(repo: Repo, tmp_path: Path) -> None:
    probe = client(repo.url, tmp_path / "probe", repo.keyring)
    pkg = probe.find(SUITE, "amd64", "bigpkg")
    with tmpfs(tmp_path / "small", _kib(pkg.size + (512 << 10))) as cache:  # the .deb fits, its 6 MiB tree not
        online = client(repo.url, cache, repo.keyring)
        with pytest.raises(CacheError) as caught:
            online.unpack(pkg)
        _assert_disk_full(caught.value, cache, f"unpacked/{pkg.sha256[:16]}_bigpkg")
        assert not leftovers(cache)
        assert not [p for p in cache.rglob("unpacked/*") if p.suffix != ".lock"], "a partial tree was left"
        assert len(cached_debs(cache)) == 1  # the verified .deb stays: the next run needs no download

        remount(cache, "size=16m")
        later = client(repo.url, cache, repo.keyring)
        assert (later.unpack(pkg) / "usr/share/big/blob").read_text() == BIG_TEXT
        assert _trees_match_their_debs(cache) == 1 and not leftovers(cache)


@needs_repo_tools
def test_kernel_extraction_fills_the_disk(repo: Repo, tmp_path: Path) -> None:
    probe = client(repo.url, tmp_path / "probe", repo.keyring)
    pkg = probe.find(SUITE, "amd64", KERNEL_PACKAGE)
    with tmpfs(tmp_path / "small", _kib(pkg.size + (256 << 10))) as cache:  # the .deb fits, the kernel not
        online = client(repo.url, cache, repo.keyring)
        with pytest.raises(CacheError) as caught:
            fetch_kernel(online, x86_64(), SUITE, cache)
        _assert_disk_full(caught.value, cache, f"kernels/{pkg.sha256[:24]}")
        assert not leftovers(cache) and not list(cache.glob("kernels/*/")), "a partial kernel was left"

        remount(cache, "size=16m")
        kernel = fetch_kernel(client(repo.url, cache, repo.keyring), x86_64(), SUITE, cache)
        assert kernel.kernel.read_bytes() == FAKE_KERNEL.encode() and kernel.config["CONFIG_BPF"] == "y"


# -- a real guest image from the host's cached packages --------------------------------------------------------


@pytest.mark.slow
def test_guest_image_build_fills_the_disk_then_succeeds(host_seed: HostSeed, tmp_path: Path) -> None:
    reason = can_mount()
    if reason:
        pytest.skip(reason)
    seed, source, arch = host_seed.seed, host_seed.source, host_seed.arch
    seeded = size_of(seed)
    # Room for the seeded .debs and indexes plus 24 MiB: far less than the unpacked packages need.
    with tmpfs(tmp_path / "small", _kib(seeded + (24 << 20))) as cache:
        shutil.copytree(seed, cache, dirs_exist_ok=True)
        started = time.monotonic()
        proc = kmatrix_image(source, cache, arch)
        _out, err = proc.communicate(timeout=900)
        lines = err.strip().splitlines()
        errors = [line for line in lines if line.startswith("error:")]
        assert proc.returncode == 3, err
        assert len(errors) == 1 and "Traceback" not in err, err
        assert errors[0].startswith(f"error: disk full: no space left on the file system holding {cache}/"), err
        assert lines[-1].startswith("hint: free space there, or set KMATRIX_CACHE"), err
        # Nothing half-done that a later run would take for finished.
        assert not leftovers(cache), leftovers(cache)
        assert not list(cache.glob("images/*.cpio.gz")), "an image was left on a full disk"
        _trees_match_their_debs(cache)
        failed_s = time.monotonic() - started

        remount(cache, "size=2g")  # space again; two runs share the cache and build at once
        procs = [kmatrix_image(source, cache, arch) for _ in range(2)]
        results = [p.communicate(timeout=1800) for p in procs]
        for p, (_out, err) in zip(procs, results, strict=True):
            assert p.returncode == 0, err
        first, second = (json.loads(out)[0] for out, _err in results)
        assert first["path"] == second["path"] and sorted([first["built"], second["built"]]) == [False, True]
        image = Path(first["path"])
        assert image.stat().st_size == first["size_bytes"] == second["size_bytes"]
        names = {entry.path for entry in cpio.read_gzip_cpio(image)}  # decompresses and parses all of it
        python = f"usr/bin/python{first['python']}"
        for wanted in ("init", "usr/bin/busybox", python, "usr/bin/python3", "opt/kmatrix/harness/protocol.pyc"):
            assert wanted in names, wanted
        assert _trees_match_their_debs(cache) >= len(load_recipe().packages) - 2
        assert not leftovers(cache), leftovers(cache)
        # Byte for byte the image a build that never ran out of space makes from the same packages.
        roomy = tmp_path / "roomy"
        shutil.copytree(seed, roomy)
        reference_out, reference_err = kmatrix_image(source, roomy, arch).communicate(timeout=1800)
        reference = Path(json.loads(reference_out)[0]["path"])
        assert reference.name == image.name and reference.read_bytes() == image.read_bytes(), reference_err

    # Room for every unpacked package but only half the image: the disk fills while writing the image.
    before_image = size_of(roomy) - size_of(reference.parent)
    with tmpfs(tmp_path / "almost", _kib(before_image + reference.stat().st_size // 2)) as cache:
        shutil.copytree(seed, cache, dirs_exist_ok=True)
        _out, err = kmatrix_image(source, cache, arch).communicate(timeout=1800)
        assert f"error: disk full: no space left on the file system holding {cache}/images/{image.name}" in err, err
        assert not [p for p in cache.glob("images/*") if p.suffix != ".lock"], "a partial image was left"
        assert not leftovers(cache), leftovers(cache)
        remount(cache, "size=2g")
        out, err = kmatrix_image(source, cache, arch).communicate(timeout=1800)
        assert Path(json.loads(out)[0]["path"]).read_bytes() == reference.read_bytes(), err
    print(f"\n{errors[0]}\n(after {failed_s:.1f} s); then {first['path']}: {first['size_bytes']} bytes")
