"""Container attribution from cgroup paths and pid namespaces (harness/guest/containers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.guest.container_suite import layouts
from harness.guest.containers import CgroupPaths, Container, attribute, parse_cgroup_path

CID = "0123456789abcdef" * 4
UID = "4f8d2c1a-9b7e-4c3d-8a2b-1c0d9e8f7a6b"


@pytest.mark.parametrize(("path", "expected"), [
    (f"/docker/{CID}", Container("docker", CID)),
    (f"/system.slice/docker-{CID}.scope", Container("docker", CID)),
    (f"/kubepods/besteffort/pod{UID}/{CID}", Container("kubernetes", CID, UID)),
    (f"/kubepods/pod{UID}/{CID}", Container("kubernetes", CID, UID)),  # Guaranteed QoS: no class level
    ("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + UID.replace("-", "_")
     + f".slice/cri-containerd-{CID}.scope", Container("containerd", CID, UID)),
    ("/kubepods.slice/kubepods-pod" + UID.replace("-", "_") + f".slice/crio-{CID}.scope",
     Container("crio", CID, UID)),
    (f"/system.slice/containerd.service/cri-containerd-{CID}.scope", Container("containerd", CID)),
    (f"/machine.slice/libpod-{CID}.scope", Container("podman", CID)),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope", Container("podman", CID)),
])
def test_each_runtimes_layout_names_its_container(path: str, expected: Container) -> None:
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("path", [
    "/", "", "/init.scope", "/system.slice/sshd.service", f"/machine.slice/libpod-conmon-{CID}.scope",
    f"/system.slice/crio-conmon-{CID}.scope", f"/docker/{CID[:12]}", f"/somewhere/{CID}",
    f"/kubepods/besteffort/{CID}",
])
def test_host_cgroups_and_runtime_helpers_are_not_containers(path: str) -> None:
    assert parse_cgroup_path(path) is None


def test_the_suites_layouts_parse_back_to_what_they_expect() -> None:
    rows = layouts("tok1")
    assert {row["name"] for row in rows} >= {"docker-cgroupfs", "kubernetes-containerd", "kubernetes-crio",
                                             "podman", "host"}
    for row in rows:
        container = parse_cgroup_path(row["cgroup"])
        assert (container.to_json() if container else None) == row["expected"]["container"], row["name"]


def test_ids_map_to_paths_by_directory_inode(tmp_path: Path) -> None:
    (tmp_path / "docker" / CID).mkdir(parents=True)
    paths = CgroupPaths(str(tmp_path))
    inode = os.stat(tmp_path / "docker" / CID).st_ino
    assert paths.path(inode) == f"/docker/{CID}"
    assert paths.path(os.stat(tmp_path).st_ino) == "/"
    late = tmp_path / "late"
    late.mkdir()
    assert paths.path(os.stat(late).st_ino) == "/late"  # a miss walks the tree again
    assert paths.path(1) is None


def test_in_container_by_cgroup_or_by_pid_namespace(tmp_path: Path) -> None:
    (tmp_path / "docker" / CID).mkdir(parents=True)
    paths = CgroupPaths(str(tmp_path))
    container = os.stat(tmp_path / "docker" / CID).st_ino
    root = os.stat(tmp_path).st_ino
    assert attribute(container, 111, paths, 111)["container"] == {"runtime": "docker", "id": CID, "pod_uid": None}
    assert attribute(container, 111, paths, 111)["in_container"]
    assert attribute(root, 222, paths, 111)["in_container"]  # its own pid namespace: a container
    assert attribute(root, 111, paths, 111) == {"cgroup": "/", "container": None, "in_container": False}
    assert attribute(0, 0, paths, 111) == {"cgroup": None, "container": None, "in_container": False}


def test_a_profile_runs_a_suite_on_fewer_architectures(tmp_path: Path) -> None:
    import yaml

    from harness.errors import ConfigError
    from harness.matrix import load_matrix
    from harness.paths import project_root

    data = yaml.safe_load((project_root() / "matrix.yaml").read_text())
    path = tmp_path / "matrix.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cells = load_matrix(path).cells("ci")
    assert {c.arch for c in cells if c.suite == "tamper"} == {"x86_64"}
    assert {c.arch for c in cells if c.suite == "containers"} == {"x86_64", "s390x"}
    assert {c.arch for c in cells if c.suite == "capture"} == {"x86_64", "aarch64", "s390x"}
    data["profiles"]["ci"]["suite_archs"]["tamper"] = ["riscv64"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError, match=r"profiles\.ci\.suite_archs\.tamper"):
        load_matrix(path)
