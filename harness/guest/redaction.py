"""The drivers' in-kernel redaction, as a reference (drivers/common/kmx_events.h, "Redaction").

One pass over the captured bytes: while not in a value, every key keeps a running count of how
much of it the last bytes matched (a mismatch restarts the count at 1 if the byte is the key's
first, else 0); when a count reaches its key's length the bytes that follow, up to a delimiter or
the end, are replaced by '*'. The drivers implement exactly this; the redaction suite compares
what they captured with it, and unit tests pin it to hand-written cases.
"""

from __future__ import annotations

DELIMITERS = frozenset(b" \t\r\n\0&;,\"'")
DEFAULT_KEYS = (b"password=", b"secret=", b"token=")


def redact(data: bytes, keys: tuple[bytes, ...] = DEFAULT_KEYS) -> tuple[bytes, bool]:
    """(the bytes as a redacting driver captures them, whether anything was replaced)."""
    out = bytearray(data)
    progress = [0] * len(keys)
    in_value = redacted = False
    for i, byte in enumerate(out):
        if in_value:
            if byte in DELIMITERS:
                in_value = False
            else:
                out[i] = ord("*")
                redacted = True
            continue
        for k, key in enumerate(keys):
            if byte == key[progress[k]]:
                progress[k] += 1
                if progress[k] == len(key):
                    in_value = True
                    progress = [0] * len(keys)
                    break
            else:
                progress[k] = 1 if byte == key[0] else 0
    return bytes(out), redacted


def parse_keys(text: str) -> tuple[bytes, ...]:
    """The drivers' redact_keys format: comma-separated, 1..KMX_REDACT_KEYS_MAX keys of 1..16 bytes."""
    keys = tuple(part.encode() for part in text.split(","))
    if not 1 <= len(keys) <= 4 or not all(1 <= len(key) <= 16 for key in keys):
        raise ValueError(f"redact_keys {text!r}: 1 to 4 comma-separated keys of 1 to 16 bytes")
    return keys
