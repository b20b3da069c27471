"""The qualification matrix: matrix.yaml's validated model, cell expansion and applicability.

Data flows one way: this module reads matrix.yaml and hands out plain frozen dataclasses
(`KernelRef`, `Cell`, `Applicability`); nothing downstream needs the pydantic models.

Every problem in the file becomes one `ConfigError` naming the file, the key path in
dotted/indexed form and the bad value, e.g.::

    matrix.yaml: architectures.x86_64.kernels[0].suite: 'bulseye' is not a known Debian suite
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, NamedTuple, Self, TypeVar, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness.archs import ARCH_NAMES
from harness.errors import ConfigError
from harness.kernel import KernelFacts, format_version

__all__ = [
    "BUILDS_BY_KIND",
    "BUILD_KINDS",
    "CONSUMER_KINDS",
    "DEBIAN_SUITES",
    "DRIVER_KINDS",
    "KERNEL_SELECTIONS",
    "SCHEMA_VERSION",
    "VERSION_SOURCES",
    "Applicability",
    "Cell",
    "ConsumerSpec",
    "DebianPackageRef",
    "DriverSource",
    "DriverSpec",
    "KernelRef",
    "Matrix",
    "MatrixProblem",
    "MinimumRow",
    "applicability",
    "load_matrix",
    "minimum_report",
    "parse_matrix",
]

SCHEMA_VERSION = 1

# The Debian suites the project knows how to fetch kernels and userland from.
DEBIAN_SUITES: tuple[str, ...] = (
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "forky",
    "sid",
)
DRIVER_KINDS: tuple[str, ...] = ("kmod", "bpf", "modern_bpf")
# How a driver is built (harness/drivers has one adapter per entry):
#   kbuild      `make -C <headers> M=<dir>` on a folder of kbuild sources (per kernel)
#   dkms        a Debian dkms package's Makefile, configure probes included (per kernel)
#   bpf-legacy  the legacy eBPF probe's clang pipeline against the kernel's headers (per kernel)
#   bpf-core    a CO-RE object against the architecture's BTF (per architecture)
#   prebuilt    objects given: nothing is built
BUILD_KINDS: tuple[str, ...] = ("kbuild", "dkms", "bpf-legacy", "bpf-core", "prebuilt")
# Which builds can produce each kind of driver.
BUILDS_BY_KIND: dict[str, tuple[str, ...]] = {
    "kmod": ("kbuild", "dkms", "prebuilt"),
    "bpf": ("bpf-legacy", "prebuilt"),
    "modern_bpf": ("bpf-core", "prebuilt"),
}
# Which sources each build reads (project: a folder of this project; debian: a Debian package;
# path: a folder of the user's).
_SOURCES_BY_BUILD: dict[str, tuple[str, ...]] = {
    "kbuild": ("project", "path"),
    "dkms": ("debian",),
    "bpf-legacy": ("project", "path"),
    "bpf-core": ("project", "path"),
    "prebuilt": ("project", "path"),
}
# What a driver's produced object is called, by kind.
_MODULE_SUFFIX = {"kmod": ".ko", "bpf": ".o", "modern_bpf": ".o"}
# How a driver's version is recorded with its results:
#   git        the source folder's git revision (project or path sources)
#   package    the Debian package's version (debian sources)
#   dkms-conf  dkms.conf's PACKAGE_VERSION (dkms builds)
#   modinfo    the built module's `version=` modinfo field (kmod drivers)
VERSION_SOURCES: tuple[str, ...] = ("git", "package", "dkms-conf", "modinfo")
# agent: the project's guest agent reads the driver through the kmx protocol;
# command: a third-party program in the guest captures, the harness parses what it reads back.
CONSUMER_KINDS: tuple[str, ...] = ("agent", "command")
# Placeholders a command consumer's argument lists may use.
CONSUMER_PLACEHOLDERS: tuple[str, ...] = ("file",)
KERNEL_SELECTIONS: tuple[str, ...] = ("newest", "all", "minimum")

Version = tuple[int, int, int]
T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")

# Names people reach for out of habit (Debian's, the kernel's); kmatrix uses `uname -m` names.
_ARCH_ALIASES = {
    "amd64": "x86_64",
    "x86": "x86_64",
    "arm64": "aarch64",
    "ppc64el": "ppc64le",
    "powerpc": "ppc64le",
    "loong64": "loongarch64",
    "s390": "s390x",
}
_VERSION_RE = re.compile(r"^(\d+)\.(\d+)$")
_CONFIG_RE = re.compile(r"^CONFIG_[A-Z0-9_]+$")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")  # suites and consumers: they go into cell ids
_DRIVER_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")  # drivers: also into cell ids; falco-kmod reads well
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")  # a Debian package name (Policy 5.6.1)
_MODULE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")  # a file name, no directories
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_PROFILE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a user kernel's name


# --------------------------------------------------------------------------------------------
# Errors


class MatrixProblem(ConfigError):
    """A problem at one key path of the matrix, before the file name is known.

    `parse_matrix` and `load_matrix` turn it into a ConfigError prefixed with the source.
    """

    def __init__(self, path: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}" if path else message, hint=hint)
        self.path = path
        self.problem = message


def _fail(message: str, hint: str | None = None) -> PydanticCustomError:
    # The message travels in the context (not the template) so braces in user values are safe.
    return PydanticCustomError("kmatrix", "{message}", {"message": message, "hint": hint or ""})


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    kind = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
    return f"{kind} {_show(value)}"


def _choices(bad: str, choices: Iterable[str], label: str = "choose one of") -> str:
    options = list(choices)
    close = difflib.get_close_matches(bad, options, n=1, cutoff=0.6)
    listed = f"{label}: {', '.join(options)}"
    return f"did you mean {close[0]!r}? {listed}" if close else listed


# --------------------------------------------------------------------------------------------
# Field validators (each raises one kmatrix error naming the bad value)


def _debian_suite(value: str) -> str:
    if value not in DEBIAN_SUITES:
        raise _fail(f"{value!r} is not a known Debian suite", _choices(value, DEBIAN_SUITES, "known suites"))
    return value


def _arch_name(value: str) -> str:
    if value not in ARCH_NAMES:
        alias = _ARCH_ALIASES.get(value)
        hint = (
            f"kmatrix uses `uname -m` names: write {alias!r}; known: {', '.join(ARCH_NAMES)}"
            if alias
            else _choices(value, ARCH_NAMES, "known architectures")
        )
        raise _fail(f"{value!r} is not a known architecture", hint)
    return value


def _matching(pattern: re.Pattern[str], noun: str, hint: str) -> Callable[[str], str]:
    """A validator accepting what pattern matches; the error names the noun and how to write one."""
    def check(value: str) -> str:
        if not pattern.match(value):
            raise _fail(f"{value!r} is not {noun}", hint)
        return value
    return check


def _one_of(choices: Sequence[str], noun: str) -> Callable[[str], str]:
    """A validator accepting one of choices; the error names the noun and the nearest choices."""
    def check(value: str) -> str:
        if value not in choices:
            raise _fail(f"{value!r} is not {noun}", _choices(value, choices))
        return value
    return check


def _module_file(value: str) -> str:
    if not _MODULE_RE.match(value) or value in (".", ".."):
        raise _fail(
            f"{value!r} is not a file name",
            "the object the build produces, without directories: e.g. kmx.ko or probe.bpf.o",
        )
    return value


def _project_folder(value: str) -> str:
    path = PurePosixPath(value)
    if not value.strip() or path.is_absolute() or ".." in path.parts:
        raise _fail(
            f"{value!r} is not a folder inside the project",
            "a relative path from the repository root, e.g. drivers/kmod (use `path:` for folders elsewhere)",
        )
    return value


def _argv(values: list[str]) -> list[str]:
    if not values:
        raise _fail("[] is empty: give the command and its arguments")
    for value in values:
        for placeholder in _PLACEHOLDER_RE.findall(value):
            if placeholder not in CONSUMER_PLACEHOLDERS:
                raise _fail(
                    f"{{{placeholder}}} in {value!r} is not a placeholder",
                    "known placeholders: " + ", ".join(f"{{{name}}}" for name in CONSUMER_PLACEHOLDERS),
                )
    if not values[0].strip():
        raise _fail(f"{values[0]!r} is not a program name")
    return values


def _kernel_selection(value: str) -> str:
    if value not in KERNEL_SELECTIONS:
        raise _fail(f"{value!r} is not a kernel selection", _choices(value, KERNEL_SELECTIONS))
    return value


def _config_option(value: str) -> str:
    if not _CONFIG_RE.match(value):
        upper = value.upper()
        guess = upper if upper.startswith("CONFIG_") else "CONFIG_" + upper
        hint = (
            f"did you mean {guess!r}?"
            if _CONFIG_RE.match(guess)
            else "kernel config options are CONFIG_ followed by A-Z, 0-9 and _"
        )
        raise _fail(f"{value!r} is not a kernel config option (must look like CONFIG_NAME)", hint)
    return value


def _version(value: object) -> Version:
    hint = 'write the version as a quoted "MAJOR.MINOR" string, e.g. "5.10"'
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, float):
            raise _fail(
                f"{value!r} is a number, not a version (YAML reads 5.10 as 5.1)",
                hint,
            )
        raise _fail(f"{_show(value)} is not a MAJOR.MINOR version string", hint)
    match = _VERSION_RE.match(value)
    if not match:
        raise _fail(f"{value!r} is not a MAJOR.MINOR version", hint)
    return int(match[1]), int(match[2]), 0


def _schema(value: int) -> int:
    if value != SCHEMA_VERSION:
        raise _fail(
            f"{value!r} is not a supported schema version (this kmatrix reads schema {SCHEMA_VERSION})",
            f"write `schema: {SCHEMA_VERSION}`, or upgrade kmatrix",
        )
    return value


def _mirror(value: str) -> str:
    parts = urlsplit(value)
    ok = (parts.scheme in ("http", "https") and bool(parts.netloc)) or (parts.scheme == "file" and bool(parts.path))
    if not ok:
        raise _fail(
            f"{value!r} is not an http://, https:// or file:// URI",
            "e.g. mirror: http://deb.example.org/debian (the directory holding dists/ and pool/)",
        )
    return value


def _nonempty(what: str) -> Callable[[list[T]], list[T]]:
    def check(values: list[T]) -> list[T]:
        if not values:
            raise _fail(f"[] is empty: list at least one {what}")
        return values

    return check


def _unique(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise _fail(f"{value!r} is listed twice")
        seen.add(value)
    return values


def _nonempty_unique(what: str) -> Callable[[list[str]], list[str]]:
    def check(values: list[str]) -> list[str]:
        if not values:
            raise _fail(f"[] is empty: list at least one {what} (or leave the key out)")
        return _unique(values)

    return check


def _nonempty_mapping(what: str) -> Callable[[dict[K, V]], dict[K, V]]:
    def check(values: dict[K, V]) -> dict[K, V]:
        if not values:
            raise _fail(f"{{}} is empty: define at least one {what}")
        return values

    return check


def _userland(values: dict[str, str]) -> dict[str, str]:
    if "default" not in values:
        raise _fail(
            "missing required key 'default'",
            "userland: {default: trixie} names the suite whose Python runs in guests",
        )
    return values


DebianSuite = Annotated[str, AfterValidator(_debian_suite)]
ArchName = Annotated[str, AfterValidator(_arch_name)]
DriverKind = Annotated[str, AfterValidator(_one_of(DRIVER_KINDS, "a driver kind"))]
BuildKind = Annotated[str, AfterValidator(_one_of(BUILD_KINDS, "a build"))]
VersionSource = Annotated[str, AfterValidator(_one_of(VERSION_SOURCES, "a version source"))]
ConsumerKind = Annotated[str, AfterValidator(_one_of(CONSUMER_KINDS, "a consumer kind"))]
DriverName = Annotated[str, AfterValidator(_matching(
    _DRIVER_NAME_RE, "a valid driver name", "use lower-case letters, digits, _ and - (names become part of cell ids)"))]
PackageName = Annotated[str, AfterValidator(_matching(
    _PACKAGE_RE, "a Debian package name",
    "lower-case letters, digits, +, - and ., at least two characters, e.g. falcosecurity-scap-dkms"))]
ModuleFile = Annotated[str, AfterValidator(_module_file)]
ProjectFolder = Annotated[str, AfterValidator(_project_folder)]
Argv = Annotated[list[str], AfterValidator(_argv)]
KernelSelection = Annotated[str, AfterValidator(_kernel_selection)]
ConfigOption = Annotated[str, AfterValidator(_config_option)]
Name = Annotated[str, AfterValidator(_matching(
    _NAME_RE, "a valid name", "use lower-case letters, digits and _ (names become part of cell ids)"))]
ProfileName = Annotated[str, AfterValidator(_matching(
    _PROFILE_RE, "a valid profile name", "use lower-case letters, digits, _ and -"))]
MajorMinor = Annotated[Version, BeforeValidator(_version)]


def _userland_key(value: str) -> str:
    return value if value == "default" else _arch_name(value)


UserlandKey = Annotated[str, AfterValidator(_userland_key)]


# --------------------------------------------------------------------------------------------
# The file's model


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class KernelSpec(_Model):
    """One kernel of an architecture: a Debian suite's kernel, or a user's own by path."""

    suite: DebianSuite | None = None
    path: str | None = None  # a directory with vmlinuz + config (resolved against the matrix's dir)
    name: str | None = None  # label of a path kernel; defaults to the directory's name
    expect: MajorMinor

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise _fail(f"{value!r} is not a path", "path: /dir/with/vmlinuz-and-config")
        base = info.context.get("base_dir") if isinstance(info.context, Mapping) else None
        if base is not None and not PurePosixPath(value).is_absolute():
            return str(Path(base) / value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.suite is None) == (self.path is None):
            both = "both" if self.suite is not None else "neither"
            raise _fail(
                f"a kernel needs exactly one of 'suite' or 'path' (got {both})",
                '{suite: bookworm, expect: "6.1"} or {path: /my/kernel, expect: "6.6", name: mine}',
            )
        if self.suite is not None and self.name is not None:
            raise _fail(
                f"'name' {self.name!r} is only for kernels given by 'path'",
                "a suite kernel is named by its suite",
            )
        if not _LABEL_RE.match(self.label):
            raise _fail(
                f"{self.label!r} is not a usable kernel name",
                "give the kernel a `name:` of letters, digits, '.', '_', '+' and '-'",
            )
        return self

    @property
    def label(self) -> str:
        if self.suite is not None:
            return self.suite
        if self.name is not None:
            return self.name
        return PurePosixPath(self.path or "").name


class ArchSpec(_Model):
    kernels: Annotated[list[KernelSpec], AfterValidator(_nonempty("kernel"))]


class DebianPackageRef(_Model):
    """A package of Debian's archive: `{package: falcosecurity-scap-dkms, suite: sid}`."""

    package: PackageName
    suite: DebianSuite


class DriverSource(_Model):
    """Where a driver's sources (or objects) come from: exactly one of the three."""

    project: ProjectFolder | None = None  # a folder of this project, relative to its root
    debian: DebianPackageRef | None = None  # a Debian source/dkms package
    path: str | None = None  # a folder of the user's (relative: to the matrix file's directory)

    @field_validator("path")
    @classmethod
    def _resolve_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise _fail(f"{value!r} is not a path", "path: /dir/with/the/driver")
        base = info.context.get("base_dir") if isinstance(info.context, Mapping) else None
        if base is not None and not PurePosixPath(value).is_absolute():
            return str(Path(base) / value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [key for key in ("project", "debian", "path") if getattr(self, key) is not None]
        if len(given) != 1:
            raise _fail(
                f"a driver source needs exactly one of 'project', 'debian' or 'path' (got "
                f"{' and '.join(given) if given else 'none'})",
                "{project: drivers/kmod}, {debian: {package: falcosecurity-scap-dkms, suite: sid}} "
                "or {path: /my/driver}",
            )
        return self

    @property
    def kind(self) -> str:
        """project, debian or path."""
        return "project" if self.project is not None else ("debian" if self.debian is not None else "path")


# What a documented difference may name: the checks of the capture suite through a command consumer
# (harness/guest/command_capture.py), "oracle" for its tracefs comparison.
DIFFERENCE_CHECKS = ("enter event", "exit event", "raw arguments", "return value", "oracle", "not captured")


def _difference_what(value: str) -> str:
    if value in DIFFERENCE_CHECKS or re.fullmatch(r"(enter|exit) param [a-z_0-9]+", value):
        return value
    raise ValueError(f"{value!r} is not a check of the suite: one of {', '.join(DIFFERENCE_CHECKS)}, "
                     "or 'enter param NAME' / 'exit param NAME'")


class DriverDifference(_Model):
    """A check of the capture suite a driver legitimately does otherwise than the reference drivers:
    the suite still runs the check, and accepts its failure for `call` ('*': every call) because of `why`."""

    call: Annotated[str, Field(min_length=1, pattern=r"^(\*|[a-z_0-9]+)$")]
    what: Annotated[str, AfterValidator(_difference_what)]
    why: Annotated[str, Field(min_length=10)]
    archs: Annotated[list[ArchName], AfterValidator(_nonempty_unique("architecture"))] | None = None  # None: all


class DriverSpec(_Model):
    """A driver under test: what it is, where it comes from, how it is built and who reads it."""

    kind: DriverKind
    # An architecture left out is not supported by the driver.
    min_kernel: dict[ArchName, MajorMinor]
    requires_config: Annotated[list[ConfigOption], AfterValidator(_unique)] = []
    source: DriverSource
    build: BuildKind
    module: ModuleFile  # the object the build produces (kmx.ko, scap.ko, kmx_modern.bpf.o)
    consumer: Name  # a key of `consumers`
    version_from: VersionSource | None = None  # how its version is recorded (None: not separately)
    differences: list[DriverDifference] = []  # documented departures from the reference expectations

    @property
    def module_name(self) -> str:
        """The kernel's name for a module (scap for scap.ko; '-' reads as '_'); the file's stem otherwise."""
        if self.module.endswith(".ko"):
            return self.module.removesuffix(".ko").replace("-", "_")
        return self.module


class ConsumerSpec(_Model):
    """Who reads a driver's events in the guest: the project's agent, or a third-party command.

    A command captures with `capture` (an argument list; `{file}` is the capture file), is read back
    with `read`, and `version` prints its version; `debian` names the package that puts it (and its
    libraries) into the guest image.
    """

    kind: ConsumerKind
    debian: DebianPackageRef | None = None
    capture: Argv | None = None
    read: Argv | None = None
    version: Argv | None = None


class SuiteSpec(_Model):
    description: str
    archs: Annotated[list[ArchName], AfterValidator(_nonempty_unique("architecture"))] | None = None
    requires_config: Annotated[list[ConfigOption], AfterValidator(_unique)] = []


class ProfileSpec(_Model):
    kernels: KernelSelection
    archs: Annotated[list[ArchName], AfterValidator(_nonempty_unique("architecture"))] | None = None
    drivers: Annotated[list[str], AfterValidator(_nonempty_unique("driver"))] | None = None
    suites: Annotated[list[str], AfterValidator(_nonempty_unique("suite"))] | None = None
    # A suite run on fewer of the profile's architectures (CI keeps the slow suites to one or two).
    suite_archs: dict[str, Annotated[list[ArchName], AfterValidator(_nonempty_unique("architecture"))]] = {}


def _check_consumer(name: str, consumer: ConsumerSpec) -> None:
    at = f"consumers.{name}"
    extras = [key for key in ("debian", "capture", "read", "version") if getattr(consumer, key) is not None]
    if consumer.kind == "agent":
        if extras:
            raise MatrixProblem(
                f"{at}.{extras[0]}",
                f"an agent consumer takes no {extras[0]!r}",
                hint="the project's agent is in every guest image and reads the kmx protocol: {kind: agent}",
            )
        return
    for key in ("debian", "capture", "read"):
        if getattr(consumer, key) is None:
            raise MatrixProblem(
                at,
                f"missing required key {key!r} (a command consumer needs debian, capture and read)",
                hint="e.g. {kind: command, debian: {package: sysdig, suite: sid}, "
                "capture: [sysdig, -w, '{file}'], read: [sysdig, -r, '{file}']}",
            )
    for key in ("capture", "read"):
        argv: list[str] = getattr(consumer, key)
        if not any("{file}" in word for word in argv):
            raise MatrixProblem(
                f"{at}.{key}",
                f"{_show(argv)} never names the capture file",
                hint="put {file} where the command takes the capture file, e.g. [sysdig, -w, '{file}']",
            )


def _check_driver(name: str, driver: DriverSpec, consumers: Mapping[str, ConsumerSpec]) -> None:
    """What no single field can say: build vs kind, source vs build, module vs kind, the consumer."""
    at = f"drivers.{name}"
    builds = BUILDS_BY_KIND[driver.kind]
    if driver.build not in builds:
        raise MatrixProblem(
            f"{at}.build",
            f"{driver.build!r} cannot build a {driver.kind} driver",
            hint=f"a {driver.kind} driver is built by: {', '.join(builds)}",
        )
    sources = _SOURCES_BY_BUILD[driver.build]
    if driver.source.kind not in sources:
        raise MatrixProblem(
            f"{at}.source.{driver.source.kind}",
            f"a {driver.build} build does not read a {driver.source.kind} source",
            hint=f"a {driver.build} build reads: {', '.join(sources)}",
        )
    suffix = _MODULE_SUFFIX[driver.kind]
    if not driver.module.endswith(suffix) or driver.module == suffix:
        raise MatrixProblem(
            f"{at}.module",
            f"{driver.module!r} is not a {driver.kind} object (its name must end in {suffix})",
            hint="the file the build produces, e.g. kmx.ko for a kmod, probe.bpf.o for a BPF probe",
        )
    if driver.consumer not in consumers:
        raise MatrixProblem(
            f"{at}.consumer",
            f"{driver.consumer!r} is not a consumer in `consumers`",
            hint=_choices(driver.consumer, consumers, "defined"),
        )
    needs = {"git": ("source", ("project", "path")), "package": ("source", ("debian",)),
             "dkms-conf": ("build", ("dkms",)), "modinfo": ("kind", ("kmod",))}
    if driver.version_from is not None:
        key, allowed = needs[driver.version_from]
        have = driver.source.kind if key == "source" else getattr(driver, key)
        if have not in allowed:
            raise MatrixProblem(
                f"{at}.version_from",
                f"{driver.version_from!r} needs a {key} of {' or '.join(allowed)} (this driver's is {have})",
                hint=_version_hint(driver),
            )


def _version_hint(driver: DriverSpec) -> str:
    fits = ["git"] if driver.source.kind in ("project", "path") else ["package"]
    if driver.build == "dkms":
        fits.append("dkms-conf")
    if driver.kind == "kmod":
        fits.append("modinfo")
    return f"for this driver: {', '.join(fits)} (or leave version_from out)"


# --------------------------------------------------------------------------------------------
# What the matrix hands out


@dataclass(frozen=True)
class KernelRef:
    """One kernel of one architecture, as declared (the exact version is resolved at fetch time)."""

    arch: str
    expect: Version  # the declared MAJOR.MINOR, patch 0
    label: str  # the suite, or a path kernel's name; part of cell ids
    suite: str | None = None
    path: Path | None = None

    @property
    def source(self) -> str:
        """Where it comes from, for messages: the suite or the directory."""
        return self.suite if self.suite is not None else str(self.path)

    @property
    def expect_text(self) -> str:
        return _mm(self.expect)


@dataclass(frozen=True)
class Cell:
    """(arch, kernel, driver, suite): the unit the runner runs and the report shows."""

    arch: str
    kernel: KernelRef
    driver: str
    suite: str
    declared_min: Version | None = None  # the driver's declared minimum for this arch, if any

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.kernel.label}-{self.driver}-{self.suite}"


@dataclass(frozen=True)
class Applicability:
    runnable: bool
    reason: str | None
    pending: bool = False  # runnable as far as known, but the kernel's config is not yet known


class MinimumRow(NamedTuple):
    arch: str
    driver: str
    declared: Version | None  # None: the driver does not support the arch
    tested: KernelRef | None  # None: no kernel in the matrix meets the minimum


def _mm(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def _one(values: Sequence[str] | str | None) -> Sequence[str] | None:
    return [values] if isinstance(values, str) else values


class Matrix(_Model):
    """matrix.yaml, validated. Build it with `load_matrix` or `parse_matrix`."""

    schema_version: Annotated[int, AfterValidator(_schema)] = Field(alias="schema")
    mirror: Annotated[str, AfterValidator(_mirror)] | None = None
    userland: Annotated[dict[UserlandKey, DebianSuite], AfterValidator(_userland)]
    architectures: Annotated[dict[ArchName, ArchSpec], AfterValidator(_nonempty_mapping("architecture"))]
    consumers: Annotated[dict[Name, ConsumerSpec], AfterValidator(_nonempty_mapping("consumer"))]
    drivers: Annotated[dict[DriverName, DriverSpec], AfterValidator(_nonempty_mapping("driver"))]
    suites: Annotated[dict[Name, SuiteSpec], AfterValidator(_nonempty_mapping("suite"))]
    profiles: Annotated[dict[ProfileName, ProfileSpec], AfterValidator(_nonempty_mapping("profile"))]

    @model_validator(mode="after")
    def _cross_references(self) -> Self:
        for arch, spec in self.architectures.items():
            first: dict[str, int] = {}
            for index, kernel in enumerate(spec.kernels):
                key = "suite" if kernel.suite is not None else ("name" if kernel.name else "path")
                if kernel.label in first:
                    raise MatrixProblem(
                        f"architectures.{arch}.kernels[{index}].{key}",
                        f"{kernel.label!r} is listed twice for {arch} (also kernels[{first[kernel.label]}])",
                        hint="each kernel of an architecture needs its own suite or name",
                    )
                first[kernel.label] = index
        for name, consumer in self.consumers.items():
            _check_consumer(name, consumer)
        modules: dict[str, str] = {}
        for name, driver in self.drivers.items():
            _check_driver(name, driver, self.consumers)
            if driver.module in modules:
                raise MatrixProblem(
                    f"drivers.{name}.module",
                    f"{driver.module!r} is also drivers.{modules[driver.module]}.module",
                    hint="every driver's object needs its own file name (they share the guest's driver folder, "
                    "and the kernel loads one module of a name)",
                )
            modules[driver.module] = name
        for name, profile in self.profiles.items():
            refs: tuple[tuple[str, list[str] | None, Mapping[str, object], str], ...] = (
                ("archs", profile.archs, self.architectures, "an architecture in `architectures`"),
                ("drivers", profile.drivers, self.drivers, "a driver in `drivers`"),
                ("suites", profile.suites, self.suites, "a suite in `suites`"),
            )
            for key, values, known, what in refs:
                for index, value in enumerate(values or ()):
                    if value not in known:
                        raise MatrixProblem(
                            f"profiles.{name}.{key}[{index}]",
                            f"{value!r} is not {what}",
                            hint=_choices(value, known, "defined"),
                        )
            suites = profile.suites or list(self.suites)
            archs = profile.archs or list(self.architectures)
            for suite, suite_archs in profile.suite_archs.items():
                if suite not in suites:
                    raise MatrixProblem(f"profiles.{name}.suite_archs.{suite}",
                                        f"{suite!r} is not a suite of this profile",
                                        hint=_choices(suite, dict.fromkeys(suites), "in the profile"))
                for index, arch in enumerate(suite_archs):
                    if arch not in archs:
                        raise MatrixProblem(f"profiles.{name}.suite_archs.{suite}[{index}]",
                                            f"{arch!r} is not an architecture of this profile",
                                            hint=_choices(arch, dict.fromkeys(archs), "in the profile"))
        return self

    # ---- lookups

    @property
    def profile_names(self) -> list[str]:
        return list(self.profiles)

    def profile(self, name: str) -> ProfileSpec:
        try:
            return self.profiles[name]
        except KeyError:
            raise ConfigError(f"unknown profile {name!r}", hint=_choices(name, self.profiles, "profiles")) from None

    def _arch(self, arch: str) -> ArchSpec:
        try:
            return self.architectures[arch]
        except KeyError:
            raise ConfigError(
                f"architecture {arch!r} is not in the matrix",
                hint=_choices(arch, self.architectures, "architectures"),
            ) from None

    def kernels(self, arch: str) -> list[KernelRef]:
        """The architecture's kernels, oldest first (ties keep the file's order)."""
        refs = [
            KernelRef(
                arch=arch,
                expect=spec.expect,
                label=spec.label,
                suite=spec.suite,
                path=Path(spec.path) if spec.path is not None else None,
            )
            for spec in self._arch(arch).kernels
        ]
        return sorted(refs, key=lambda ref: ref.expect)

    def newest_kernel(self, arch: str) -> KernelRef:
        return self.kernels(arch)[-1]

    def userland_suite(self, arch: str) -> str:
        return self.userland.get(arch, self.userland["default"])

    def declared_min(self, driver: str, arch: str) -> Version | None:
        return self.drivers[driver].min_kernel.get(arch)

    def minimum_candidates(self, arch: str, driver: str) -> list[KernelRef]:
        """Kernels of `arch` at or above the driver's declared minimum there, oldest first.

        The `minimum` profile tests the first; a runner that finds it lacks a required config
        option (e.g. no BTF) can fall forward to the next and report that.
        """
        declared = self.declared_min(driver, arch)
        if declared is None:
            return []
        return [ref for ref in self.kernels(arch) if ref.expect >= declared]

    def minimum_kernel(self, arch: str, driver: str) -> KernelRef | None:
        """The oldest kernel of `arch` at or above the driver's declared minimum there, if any."""
        return next(iter(self.minimum_candidates(arch, driver)), None)

    # ---- expansion

    def cells(
        self,
        profile: str = "full",
        *,
        archs: Sequence[str] | str | None = None,
        drivers: Sequence[str] | str | None = None,
        suites: Sequence[str] | str | None = None,
    ) -> list[Cell]:
        """Expand a profile into cells, narrowed by the CLI filters.

        Cells a profile selects but that cannot run (driver unsupported on the arch, suite for
        another arch, kernel below the minimum) are kept: `applicability` says why they skip.
        Under `minimum`, an (arch, driver) with no qualifying kernel gets the newest kernel, so
        its skip reason is reported rather than the cell vanishing.

        Order: architecture (file order), kernel (oldest first), driver, suite (file order),
        so cells sharing a boot are adjacent.
        """
        spec = self.profile(profile)
        sel_archs = self._narrow(
            profile, "architecture", spec.archs or list(self.architectures), _one(archs), self.architectures
        )
        sel_drivers = self._narrow(profile, "driver", spec.drivers or list(self.drivers), _one(drivers), self.drivers)
        sel_suites = self._narrow(profile, "suite", spec.suites or list(self.suites), _one(suites), self.suites)

        out: list[tuple[tuple[int, int, int, int], Cell]] = []
        for arch_index, arch in enumerate(sel_archs):
            kernels = self.kernels(arch)
            for driver_index, driver in enumerate(sel_drivers):
                chosen: list[KernelRef]
                if spec.kernels == "all":
                    chosen = kernels
                elif spec.kernels == "newest":
                    chosen = [kernels[-1]]
                else:  # minimum
                    chosen = [self.minimum_kernel(arch, driver) or kernels[-1]]
                declared = self.declared_min(driver, arch)
                for kernel in chosen:
                    kernel_index = kernels.index(kernel)
                    for suite_index, suite in enumerate(sel_suites):
                        if suite in spec.suite_archs and arch not in spec.suite_archs[suite]:
                            continue
                        cell = Cell(arch, kernel, driver, suite, declared)
                        out.append(((arch_index, kernel_index, driver_index, suite_index), cell))
        return [cell for _, cell in sorted(out, key=lambda item: item[0])]

    @staticmethod
    def _narrow(
        profile: str,
        what: str,
        selected: list[str],
        wanted: Sequence[str] | None,
        known: Mapping[str, object],
    ) -> list[str]:
        if wanted is None:
            return selected
        for value in wanted:
            if value not in known:
                raise ConfigError(f"{what} {value!r} is not in the matrix", hint=_choices(value, known, f"{what}s"))
            if value not in selected:
                raise ConfigError(
                    f"profile {profile!r} does not select {what} {value!r}",
                    hint=f"it selects: {', '.join(selected)}; pick another profile (e.g. full) or filter",
                )
        return [value for value in selected if value in wanted]


# --------------------------------------------------------------------------------------------
# Applicability


def applicability(matrix: Matrix, cell: Cell, facts: KernelFacts | None) -> Applicability:
    """Can `cell` run on this kernel? Computed from matrix.yaml and, once fetched, the kernel's facts."""
    driver = matrix.drivers[cell.driver]
    suite = matrix.suites[cell.suite]
    declared = driver.min_kernel.get(cell.arch)
    if declared is None:
        return Applicability(
            False,
            f"driver {cell.driver} does not support {cell.arch} "
            f"(no minimum in matrix.yaml drivers.{cell.driver}.min_kernel)",
        )
    if suite.archs is not None and cell.arch not in suite.archs:
        return Applicability(False, f"suite {cell.suite} runs only on {', '.join(suite.archs)}")
    version = facts.version if facts is not None else cell.kernel.expect
    if version < declared:
        return Applicability(
            False,
            f"kernel {format_version(version)} is below {cell.driver}'s minimum {_mm(declared)} for {cell.arch}",
        )
    required: dict[str, str] = {}
    for option in driver.requires_config:
        required.setdefault(option, cell.driver)
    for option in suite.requires_config:
        required.setdefault(option, f"suite {cell.suite}")
    if not required:
        return Applicability(True, None)
    if facts is None:
        return Applicability(True, "kernel config not yet known (not fetched)", pending=True)
    missing: dict[str, list[str]] = {}
    for option, by in required.items():
        if not facts.enabled(option):
            missing.setdefault(by, []).append(option)
    if missing:
        lacks = " and ".join(f"{', '.join(options)} (required by {by})" for by, options in missing.items())
        return Applicability(False, f"kernel {format_version(version)} lacks {lacks}")
    return Applicability(True, None)


def minimum_report(matrix: Matrix) -> list[MinimumRow]:
    """Per (arch, driver): the declared minimum and the kernel the `minimum` profile tests."""
    return [
        MinimumRow(arch, driver, matrix.declared_min(driver, arch), matrix.minimum_kernel(arch, driver))
        for arch in matrix.architectures
        for driver in matrix.drivers
    ]


# --------------------------------------------------------------------------------------------
# Loading


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys (a second `x86_64:` would silently win)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc` (for listing its allowed keys)."""
    tp: Any = Matrix
    for item in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(field.alias or name): field for name, field in tp.model_fields.items()}
            if not isinstance(item, str) or item not in fields:
                return None
            tp = fields[item].annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _render(loc: Sequence[int | str]) -> str:
    text = ""
    for item in loc:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text


_EXPECTED = {
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
    "string_type": "a string",
    "int_type": "an integer",
    "tuple_type": "a version",
}


def _from_pydantic(error: Mapping[str, Any]) -> MatrixProblem:
    loc: list[int | str] = list(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if loc and loc[-1] == "[key]":  # the key itself is bad: the path ends at it
        loc.pop()
    path = _render(loc)
    if kind == "kmatrix":
        return MatrixProblem(path, str(ctx.get("message")), hint=str(ctx.get("hint")) or None)
    if kind == "missing":
        model = _model_at(loc[:-1])
        return MatrixProblem(
            _render(loc[:-1]),
            f"missing required key {loc[-1]!r}",
            hint=f"keys here: {', '.join(_keys(model))}" if model else None,
        )
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        return MatrixProblem(
            path,
            f"unknown key {loc[-1]!r}",
            hint=_choices(str(loc[-1]), _keys(model), "allowed keys") if model else None,
        )
    if kind in _EXPECTED:
        return MatrixProblem(path, f"expected {_EXPECTED[kind]}, got {_describe(value)}")
    return MatrixProblem(path, f"{error['msg']} (got {_describe(value)})")


def parse_matrix(data: object, source: str = "matrix.yaml", *, base_dir: Path | None = None) -> Matrix:
    """Validate already-parsed YAML. Relative kernel paths are resolved against `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping, got {_describe(data)}",
            hint="start from the repository's matrix.yaml (schema, userland, architectures, ...)",
        )
    try:
        return Matrix.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        first = _from_pydantic(errors[0])
        rest = len(errors) - 1
        more = f" (and {rest} more problem{'s' if rest > 1 else ''})" if rest else ""
        raise ConfigError(f"{source}: {first}{more}", hint=first.hint) from None
    except MatrixProblem as problem:
        raise ConfigError(f"{source}: {problem}", hint=problem.hint) from None


def load_matrix(path: Path) -> Matrix:
    """Read and validate matrix.yaml; every problem is one ConfigError naming file, key path and value."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: no such file", hint="run from the repository root or pass --matrix PATH"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        if exc.context and exc.context_mark is not None and exc.problem:
            context = " ".join(str(exc.context).split())
            problem += f" ({context} started on line {exc.context_mark.line + 1})"
        raise ConfigError(f"{source}: {where}invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # PyYAML recurses per nesting level: [[[[... thousands deep is no matrix
        raise ConfigError(f"{source}: invalid YAML: nested too deeply to be a matrix file") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty", hint="start from the repository's matrix.yaml")
    return parse_matrix(data, source, base_dir=path.parent)
