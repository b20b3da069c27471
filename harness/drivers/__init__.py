"""Drivers under test: one adapter per `build` of matrix.yaml's driver declarations.

A driver is declared in matrix.yaml (kind, source, build, module, consumer, version_from, minimum
kernels, required config); `adapter_for(matrix, name)` picks the adapter registered for its
`build` and hands it the declaration. Nothing here knows a driver by name: the reference drivers
and Falco's module go through the same registry, and another kbuild module declared in matrix.yaml
builds with no Python change.

    kbuild      KbuildAdapter      harness.build.kmod.build_kmod on the declared folder and module
    dkms        DkmsAdapter        harness.thirdparty.falco.build_scap_kmod on the declared package
    bpf-legacy  LegacyBpfAdapter   harness.build.bpf_legacy.build_legacy_bpf (drivers/bpf)
    bpf-core    CoreBpfAdapter     harness.build.bpf_modern.build_modern_bpf (drivers/modern_bpf)
    prebuilt    PrebuiltAdapter    objects given in the declared folder
"""

from __future__ import annotations

from harness.drivers.adapters import (
    ADAPTERS,
    GUEST_DRIVER_DIR,
    Adapter,
    CoreBpfAdapter,
    DkmsAdapter,
    DriverArtifact,
    KbuildAdapter,
    LegacyBpfAdapter,
    PrebuiltAdapter,
    adapter_for,
    modinfo_version,
    source_folder,
)

__all__ = [
    "ADAPTERS",
    "GUEST_DRIVER_DIR",
    "Adapter",
    "CoreBpfAdapter",
    "DkmsAdapter",
    "DriverArtifact",
    "KbuildAdapter",
    "LegacyBpfAdapter",
    "PrebuiltAdapter",
    "adapter_for",
    "modinfo_version",
    "source_folder",
]
