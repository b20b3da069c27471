"""The redaction reference (harness/guest/redaction.py), pinned to hand-written cases."""

from __future__ import annotations

import pytest

from harness.guest.redaction import parse_keys, redact


@pytest.mark.parametrize(("data", "expected", "flagged"), [
    (b"password=hunter2 rest", b"password=******* rest", True),
    (b"user=bob&token=abc123&x=1", b"user=bob&token=******&x=1", True),
    (b"note secret=s3cr3t", b"note secret=******", True),
    (b"nothing secret here", b"nothing secret here", False),
    (b"token=a&password=b;secret=c\nok", b"token=*&password=*;secret=*\nok", True),
    (b"password=", b"password=", False),  # a key with no value: nothing replaced
    (b"ppassword=x", b"ppassword=*", True),  # a false start restarts the count
    (b"0123456789abcdefghijklmnopasswor", b"0123456789abcdefghijklmnopasswor", False),  # key cut off
    (b'{"secret=":"v"}', b'{"secret=":"v"}', False),  # the value ends at once, at the quote
])
def test_values_after_keys_become_stars_up_to_a_delimiter(data: bytes, expected: bytes, flagged: bool) -> None:
    assert redact(data) == (expected, flagged)


def test_custom_keys_and_their_limits() -> None:
    assert redact(b"api_key=zz end", parse_keys("api_key=")) == (b"api_key=** end", True)
    with pytest.raises(ValueError, match="1 to 4"):
        parse_keys("a,b,c,d,e")
    with pytest.raises(ValueError, match="1 to 16 bytes"):
        parse_keys("x" * 17)
    with pytest.raises(ValueError):
        parse_keys("a,,b")
