"""Strings that come from a file, made safe to print in any report format.

A tensor key, a dtype code, a file name or a message quoting them is data an
author of the file chose. Printed as it is, a newline in a key starts a new
line of output (a forged ``::error`` annotation in a CI log), an ESC starts a
terminal escape sequence, and a lone surrogate (legal in a pickle, not in
UTF-8) makes the encoder raise. :func:`printable` escapes all of them
visibly, the way Python's ``repr`` spells them, and leaves every other
character alone:

* C0 controls, DEL and C1 controls: ``\\n``, ``\\r``, ``\\t``, else ``\\xNN``;
* lone surrogates (U+D800–U+DFFF): ``\\udcff``;
* characters that reorder text or break lines without being controls
  (bidirectional embeddings, overrides and isolates, the line and paragraph
  separators, the byte-order mark): ``\\u202e``. Zero-width joiners are kept:
  they occur in real names.

What the report formats add on top (CSV quoting, JSON string escaping, the
``%``-escaping of GitHub workflow commands, Rich markup that is never parsed)
is each format's own; see ``docs/safety.md``.
"""

from __future__ import annotations

import re

__all__ = ["printable"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: C0, DEL, C1; surrogates; bidi embeddings/overrides/isolates; LS/PS; BOM.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069\u2028\u2029\ufeff]"
)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` (made a str) with every control, surrogate or reordering character escaped.

    >>> printable("layer.0\\n::error file=README.md::x")
    'layer.0\\\\n::error file=README.md::x'
    >>> printable("\\x1b[31mred\\udcff")
    '\\\\x1b[31mred\\\\udcff'
    >>> printable("ünïcode – ok")
    'ünïcode – ok'
    """
    return _UNSAFE.sub(_escape, str(text))
