"""Text from outside (a cluster object, an archive, a server's answer) made safe to print. Pure.

Shared by the runner (its report, stdout and stderr) and the CLI (everything it prints).
"""

from __future__ import annotations

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """Text that may come from outside (an archive's member names, a server's answer), made
    safe to print on one line: the one escaping function for the report, stdout and stderr.

    Every character that is not printable is written as an escape: C0 controls, DEL and C1
    controls (\\n, \\r, \\t, \\xNN), line and paragraph separators and format characters
    such as bidi overrides (\\uNNNN). A raw byte that surrogateescape kept from a name that
    is not UTF-8 is written as \\xNN, so nothing unencodable is left either. Backslashes are
    left alone: `members.show` doubles them in names.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable():
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        else:
            code = ord(ch)
            if 0xDC80 <= code <= 0xDCFF:
                out.append(f"\\x{code - 0xDC00:02x}")
            elif code <= 0xFF:
                out.append(f"\\x{code:02x}")
            elif code <= 0xFFFF:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    return "".join(out)
