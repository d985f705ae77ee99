"""The one rule for artifact paths, shared by the operator's validation and the runner's.

An artifact path is relative to its destination and must never climb out of it.
"""

from __future__ import annotations


def relative_path_problem(path: str) -> str | None:
    """Why a path could escape its base ("must ..."), or None when it is safe. Pure."""
    if path == "":
        return "must not be empty"
    if "\x00" in path:
        return "must not contain NUL"
    if "\\" in path:
        return "must not contain a backslash"
    if path.startswith("/"):
        return "must be relative, not absolute"
    if any(part == ".." for part in path.split("/")):
        return "must not contain '..'"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "must not contain control characters"
    return None
