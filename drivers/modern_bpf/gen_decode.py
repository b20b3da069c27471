#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Generate kmx_modern_decode.h (the modern BPF probe's decode table) for one architecture.

The KMX_DECODED X-macro in drivers/common/kmx_events.h is the one definition of what each
syscall's events carry; drivers/kmod/gen_decode.py parses it (reused here, never a second parser).
A BPF program has no __NR_* macros (it is built against vmlinux.h) and must not interpret a table
at run time (every branch multiplies the verifier's work), so this script writes, for one
architecture:

  * kmx_nr_to_id[nr]: the KMX_SC id of each native syscall number, from the architecture's table
    drivers/common/syscalls/<arch>.json (generated from Debian's linux-libc-dev UAPI headers, the
    same __NR_ values the kernel module's switch uses), in its own read-only section so that the
    probe's configuration stays alone at the start of .rodata;
  * kmx_n_decoded[id]: how many decoded params the enter (low nibble) and exit (high nibble) events
    of each id carry;
  * kmx_decode_enter() / kmx_decode_exit(): one switch per event type, the ids grouped by their
    param list, each param a call of the probe's writer (kmx_put_str, kmx_put_user_bytes, ...).

Usage: gen_decode.py --arch ARCH [--header kmx_events.h] [--syscalls DIR] > kmx_modern_decode.h
(standard library only; Python >= 3.8)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
NR_TABLE = 1024  # syscall numbers below this are looked up; larger ones (x32 and the like) get id 0
GENERATOR = "drivers/modern_bpf/gen_decode.py"


def _kmod_generator(path: Path | None = None):  # type: ignore[no-untyped-def]
    """drivers/kmod/gen_decode.py, imported by path (it is a script, not a package module)."""
    path = path or HERE.parent / "kmod" / "gen_decode.py"
    spec = importlib.util.spec_from_file_location("kmx_kmod_gen_decode", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def param_call(p, side: str) -> str:  # type: ignore[no-untyped-def]
    """The C call that writes one decoded param (p: gen_decode.Param)."""
    arg = f"a[{p.arg}]"
    if p.type in ("U64", "S64"):
        return f"kmx_put_u64(w, KMX_PT_{p.type}, {arg});"
    if p.type == "STR":
        return f"kmx_put_str(w, {arg});"
    if p.type == "STRV":
        return f"kmx_put_strv(w, {arg});"
    if p.type == "FD2":
        return f"kmx_put_fd2(w, {arg});"
    kind = f"KMX_PT_{p.type}"
    if p.kind == "LEN":
        # A buffer the syscall writes out (write, pwrite64, sendto data): redacted when asked.
        writer = "kmx_put_written_bytes" if p.type == "BYTES" and side == "enter" else "kmx_put_user_bytes"
        return f"{writer}(w, {kind}, {arg}, a[{p.length}]);"
    if p.kind == "RET":
        if side != "exit":
            raise ValueError(f"{p.name}: a ret-sized buffer in an enter event")
        return f"kmx_put_user_bytes(w, {kind}, {arg}, ret > 0 ? (__u64)ret : 0);"
    if p.kind == "FIXED":
        return f"kmx_put_user_bytes(w, {kind}, {arg}, {p.length});"
    if p.kind == "PLEN":
        return f"kmx_put_user_bytes_plen(w, {kind}, {arg}, a[{p.length}]);"
    raise ValueError(f"{p.name}: no writer for {p.type} from {p.source}")


def plan(header_text: str, numbers: dict[str, int]) -> dict[str, object]:
    """What the generated header encodes, as data (the unit tests compare it with the schema)."""
    gen = _kmod_generator()
    _defines, rows = gen.parse_header(header_text)
    nr_to_id = {}
    for row in rows:
        nr = numbers.get(row.name)
        if nr is not None and 0 <= nr < NR_TABLE:
            nr_to_id[nr] = row.id
    groups: dict[str, dict[tuple[str, ...], list[int]]] = {"enter": {}, "exit": {}}
    n_decoded = {}
    for row in rows:
        n_decoded[row.id] = (len(row.enter), len(row.exit))
        for side, params in (("enter", row.enter), ("exit", row.exit)):
            if params:
                calls = tuple(param_call(p, side) for p in params)
                groups[side].setdefault(calls, []).append(row.id)
    return {"rows": rows, "nr_to_id": nr_to_id, "n_decoded": n_decoded, "groups": groups,
            "max_enter": max(len(r.enter) for r in rows), "max_exit": max(len(r.exit) for r in rows),
            "sc_max": _defines["KMX_SC_MAX"]}


def _switch(name: str, signature: str, groups: dict[tuple[str, ...], list[int]],
            names: dict[int, str]) -> list[str]:
    out = [f"static __always_inline void {name}({signature})", "{", "\tswitch (id) {"]
    for calls, ids in sorted(groups.items(), key=lambda item: item[1][0]):
        for sc_id in ids:
            out.append(f"\tcase {sc_id}: /* {names[sc_id]} */")
        out += [f"\t\t{call}" for call in calls]
        out.append("\t\tbreak;")
    out += ["\tdefault:", "\t\tbreak;", "\t}", "}", ""]
    return out


def generate(header_text: str, arch: str, syscalls_json: dict) -> str:
    numbers = {name: int(nr) for name, nr in syscalls_json["syscalls"].items()}
    p = plan(header_text, numbers)
    rows = p["rows"]
    names = {r.id: r.name for r in rows}  # type: ignore[attr-defined]
    nr_to_id: dict[int, int] = p["nr_to_id"]  # type: ignore[assignment]
    n_decoded: dict[int, tuple[int, int]] = p["n_decoded"]  # type: ignore[assignment]
    groups: dict[str, dict[tuple[str, ...], list[int]]] = p["groups"]  # type: ignore[assignment]
    source = syscalls_json.get("source", {})
    id_table = 1 << (int(p["sc_max"]) - 1).bit_length()  # type: ignore[call-overload]
    out = [
        "/* SPDX-License-Identifier: GPL-2.0 */",
        f"/* Generated by {GENERATOR} --arch {arch} from kmx_events.h's KMX_DECODED table and",
        f" * drivers/common/syscalls/{arch}.json ({source.get('package', '?')} {source.get('version', '?')}"
        f" {source.get('debian_arch', '')}): do not edit. */",
        "#ifndef KMX_MODERN_DECODE_H",
        "#define KMX_MODERN_DECODE_H",
        "",
        f"#define KMX_DECODE_ARCH \"{arch}\"",
        f"#define KMX_NR_TABLE {NR_TABLE}",
        f"#define KMX_ID_TABLE {id_table}",
        f"#define KMX_MAX_ENTER_DECODED {p['max_enter']}",
        f"#define KMX_MAX_EXIT_DECODED {p['max_exit']}",
        "",
        "/* KMX_SC id of each native syscall number (0: not decoded). */",
        "static const __u8 kmx_nr_to_id[KMX_NR_TABLE] SEC(\".rodata.kmx_decode\") = {",
    ]
    for nr in sorted(nr_to_id):
        out.append(f"\t[{nr}] = {nr_to_id[nr]}, /* {names[nr_to_id[nr]]} */")
    out += [
        "};",
        "",
        "/* Decoded params per id: enter count in the low nibble, exit count in the high one. */",
        "static const __u8 kmx_n_decoded[KMX_ID_TABLE] SEC(\".rodata.kmx_decode\") = {",
    ]
    for sc_id in sorted(n_decoded):
        enter, exit_ = n_decoded[sc_id]
        if enter or exit_:
            out.append(f"\t[{sc_id}] = {enter | exit_ << 4}, /* {names[sc_id]}: {enter} enter, {exit_} exit */")
    out += ["};", ""]
    out += _switch("kmx_decode_enter", "struct kmx_writer *w, __u32 id, const __u64 *a", groups["enter"], names)
    out += _switch("kmx_decode_exit", "struct kmx_writer *w, __u32 id, const __u64 *a, long ret", groups["exit"],
                   names)
    out += ["#endif /* KMX_MODERN_DECODE_H */", ""]
    return "\n".join(out)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--header", type=Path, default=HERE.parent / "common" / "kmx_events.h")
    parser.add_argument("--syscalls", type=Path, default=HERE.parent / "common" / "syscalls")
    args = parser.parse_args(argv)
    table = json.loads((args.syscalls / f"{args.arch}.json").read_text())
    sys.stdout.write(generate(args.header.read_text(), args.arch, table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
