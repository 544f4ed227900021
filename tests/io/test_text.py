"""printable(): strings from files made safe for every report format."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from svdguard.io.text import printable

#: Unicode categories that must never survive: controls (C0, DEL, C1) and surrogates.
UNSAFE_CATEGORIES = {"Cc", "Cs"}
#: Characters that reorder or break lines although they are not controls.
REORDERING = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029\ufeff")


def test_escapes_are_spelt_as_python_spells_them() -> None:
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("\x1b[31m") == "\\x1b[31m"
    assert printable("\x00\x7f\x85\x9f") == "\\x00\\x7f\\x85\\x9f"
    assert printable("w\udc80") == "w\\udc80"
    assert printable("abc\u202edcba") == "abc\\u202edcba"
    # Python's repr spells the same characters the same way (without its quotes).
    for text in ("a\nb", "\x1b[31m", "\x9f", "w\udc80"):
        assert printable(text) == repr(text)[1:-1]


def test_ordinary_names_are_unchanged() -> None:
    for name in ("layer.0.weight", "ünïcode – ok", "模型.权重", "[/]", "a\\nb", "emoji 🙂"):
        assert printable(name) == name


@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=50))  # surrogates too
def test_output_is_always_safe_and_stable(text: str) -> None:
    safe = printable(text)
    safe.encode("utf-8")  # strict: no lone surrogate can reach an encoder
    assert not any(unicodedata.category(char) in UNSAFE_CATEGORIES for char in safe)
    assert not REORDERING.intersection(safe)
    assert printable(safe) == safe  # escaping twice changes nothing
    if not any(unicodedata.category(c) in UNSAFE_CATEGORIES or c in REORDERING for c in text):
        assert safe == text
