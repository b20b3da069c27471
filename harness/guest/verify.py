"""Check captured events against the workload's record, call by call; the first mismatch is reported.

For every expected call: an enter event on the right thread with the right syscall number, the
raw arguments and decoded params equal to what the workload used, followed (on that thread) by the
exit event with the same number, the return value the workload saw and the decoded exit params.

IA32 calls (the ia32 suite) name their x86_64 number as `nr64` and say which events are IA32:
`ia32_enter` / `ia32_exit` hold the i386 number the event must carry, or None for a native event
(an execve changes personality between its enter and its exit).
"""

from __future__ import annotations

from collections import defaultdict

from harness.guest.schema import Event, Schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Verdict:
    def __init__(self, expected: int = 0) -> None:
        self.verified = 0
        self.expected = expected
        self.mismatches: list[dict[str, Any]] = []
        self.notes: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.verified == self.expected

    def fail(self, call: dict[str, Any], what: str, expected: Any, got: Any) -> None:
        self.mismatches.append(
            {"call": call["name"], "tid": call["tid"], "what": what, "expected": expected, "got": got}
        )


def normalize(value: Any) -> Any:
    """Compare in one form: bytes as {"hex"}, tuples as lists."""
    if isinstance(value, bytes | bytearray):
        return {"hex": bytes(value).hex()}
    if isinstance(value, tuple):
        return [normalize(v) for v in value]
    return value


def _named(event: Event, specs: tuple[Any, ...], fixed: int) -> dict[str, Any]:
    values = {}
    for index, spec in enumerate(specs):
        position = fixed + index
        if position < len(event.params):
            param = event.params[position]
            values[spec.name] = {"fault": True} if param.fault else normalize(param.value)
    return values


def _ia32_mismatch(call: dict[str, Any], event: Event, side: str) -> tuple[str, Any, Any] | None:
    """(what, expected, got) when the event's IA32-ness or i386 number is not the call's."""
    key = f"ia32_{side}"
    if key not in call:
        return None if not event.ia32 else (f"{side} event kind", "native", f"ia32 {event.ia32_nr}")
    expected = call[key]
    if expected is None:
        return None if not event.ia32 else (f"{side} event kind", "native", f"ia32 {event.ia32_nr}")
    if not event.ia32:
        return (f"{side} event kind", f"ia32 {expected}", "native")
    if event.ia32_nr != expected:
        return (f"{side} ia32_nr", expected, event.ia32_nr)
    return None


def verify_calls(schema: Schema, events: list[Event], calls: list[dict[str, Any]], nr_of: dict[str, int]) -> Verdict:
    enter_type, exit_type = schema.const("KMX_EVT_SYS_ENTER"), schema.const("KMX_EVT_SYS_EXIT")
    by_tid: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        by_tid[event.tid].append(event)
    cursor: dict[int, int] = defaultdict(int)
    verdict = Verdict(expected=len(calls))
    for call in calls:
        stream = by_tid.get(call["tid"], [])
        names = [call["name"], *call.get("alt", [])]
        wanted = {call["nr64"]} if "nr64" in call else {nr_of[n] for n in names if n in nr_of}
        start = cursor[call["tid"]]
        found = next(
            (i for i in range(start, len(stream)) if stream[i].kind == enter_type and stream[i].nr in wanted), None
        )
        if found is None:
            verdict.fail(call, "enter event", f"{'/'.join(names)} on tid {call['tid']}", "none found")
            continue
        enter = stream[found]
        after = found + 1
        exit_event = stream[after] if after < len(stream) else None
        cursor[call["tid"]] = after + 1
        problem = _ia32_mismatch(call, enter, "enter")
        if problem:
            verdict.fail(call, *problem)
            continue
        for index, value in call["args"].items():
            arg = enter.args[int(index)] if int(index) < len(enter.args) else None
            if arg != value:
                verdict.fail(call, f"arg{index}", hex(value), hex(arg) if arg is not None else None)
                break
        else:
            spec = schema.by_name.get(enter_name(names, nr_of, enter.nr))
            ok = _check_named(
                verdict, call, "enter", call["enter"], _named(enter, spec.enter if spec else (), enter.fixed_count)
            )
            if ok and (exit_event is None or exit_event.kind != exit_type or exit_event.nr != enter.nr):
                got = None if exit_event is None else f"type {exit_event.type} nr {exit_event.nr}"
                verdict.fail(call, "exit event after enter", f"exit of nr {enter.nr}", got)
                ok = False
            problem = _ia32_mismatch(call, exit_event, "exit") if ok and exit_event is not None else None
            if problem:
                verdict.fail(call, *problem)
                ok = False
            if ok and exit_event is not None:
                if exit_event.ret != call["ret"]:
                    verdict.fail(call, "return value", call["ret"], exit_event.ret)
                elif _check_named(
                    verdict,
                    call,
                    "exit",
                    call["exit"],
                    _named(exit_event, spec.exit if spec else (), exit_event.fixed_count),
                ):
                    verdict.verified += 1
    return verdict


def enter_name(names: list[str], nr_of: dict[str, int], nr: int) -> str:
    return next((n for n in names if nr_of.get(n) == nr), names[0])


def _check_named(
    verdict: Verdict, call: dict[str, Any], side: str, expected: dict[str, Any], got: dict[str, Any]
) -> bool:
    for name, value in expected.items():
        if got.get(name) != value:
            verdict.fail(call, f"{side} param {name}", value, got.get(name, "missing"))
            return False
    return True


def timestamps_monotonic(events: list[Event]) -> list[str]:
    """Per-CPU timestamps must never go back; returns the violations."""
    last: dict[int, int] = {}
    problems = []
    per_cpu: dict[int, list[Event]] = defaultdict(list)
    for event in events:
        per_cpu[event.cpu].append(event)
    for cpu, stream in per_cpu.items():
        for event in stream:
            if event.ts_ns < last.get(cpu, 0):
                problems.append(f"cpu {cpu}: {event.ts_ns} after {last[cpu]}")
            last[cpu] = event.ts_ns
    return problems


def marked_sequence(nrs_with_args: list[tuple[int, int | None]], close_nr: int, begin: int, end: int) -> list[int]:
    """Syscall numbers strictly between the begin and end markers (close(begin) ... close(end))."""
    out: list[int] = []
    inside = False
    for nr, arg0 in nrs_with_args:
        if nr == close_nr and arg0 == begin:
            inside, out = True, []
            continue
        if nr == close_nr and arg0 == end and inside:
            return out
        if inside:
            out.append(nr)
    return out
