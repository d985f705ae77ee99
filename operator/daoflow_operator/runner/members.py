"""Tar headers and the rules a member must pass before anything is written.

Pure: these functions look at bytes and strings only. The streaming reader (tarstream.py)
feeds them, and the unpacker (unpack.py) acts on what they return.

Why our own header parser rather than `tarfile`: tarfile keeps every member in a list (memory
grows with the member count) and reads pax and GNU long-name headers whole, whatever size they
declare. Here each header kind has a bound, and the member list is never kept.
Why not libarchive's reader, which streams with bounded memory: it was measured against this one
(docs/runner.md, "Choosing the tar reader"). It is no faster here, and it applies pax records,
long names and typeflags before these rules can see them, so some of them cannot be applied.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from .failures import corrupt, limit_exceeded, unsafe
from .report import escape

BLOCK = 512
# Bounds for the headers that carry names: far above any real path (PATH_MAX is 4096).
MAX_LONG_HEADER = 1 << 20
MAX_PATH_BYTES = 4096
# What Linux accepts: a name of at most 255 bytes per component (NAME_MAX), and a path or a
# symlink target of at most 4095 bytes (PATH_MAX counts the final NUL).
NAME_MAX = 255
PATH_MAX = 4096
# Names at the top of the target that the runner keeps for its own staging and journal.
RESERVED_TOP_LEVEL = (".daoflow-restore",)

REGULAR, DIRECTORY, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"

# typeflag -> kind. Everything else is refused, with a reason in _REFUSED_TYPES when known.
_TYPES = {b"0": REGULAR, b"\x00": REGULAR, b"7": REGULAR, b"5": DIRECTORY,
          b"2": SYMLINK, b"1": HARDLINK}
_REFUSED_TYPES = {
    b"3": "character device nodes are refused",
    b"4": "block device nodes are refused",
    b"6": "FIFOs are refused",
    b"S": "GNU sparse members are not supported",
    b"M": "multi-volume members are not supported",
    b"N": "old GNU long-name members are not supported",
}
# Extension headers: they describe the next member and are consumed by the reader.
PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK, VOLUME_LABEL = b"x", b"g", b"L", b"K", b"V"
EXTENSION_TYPES = (PAX_LOCAL, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK, VOLUME_LABEL)
# Members whose data follows their header; v7 regular files may be folders (`v7_folder`).
DATA_TYPES = (b"0", b"\x00", b"7")
V7_REGULAR = (b"0", b"\x00")


@dataclass
class Header:
    """One raw 512-byte header, decoded but not yet checked for safety."""

    name: str
    mode: int
    size: int
    mtime: float
    typeflag: bytes
    linkname: str


@dataclass(frozen=True)
class Member:
    """A member that passed every check: a safe relative path and a known kind."""

    path: str  # normalised, relative, no '.' or '..' components
    kind: str
    mode: int  # permission bits only, setuid/setgid removed
    size: int
    mtime: float
    linkname: str = ""  # symlink target as stored, or the hard link's normalised path


def show(name: str, limit: int = 120) -> str:
    """A member name made safe to print: quoted, control characters escaped, length bounded.

    Member names come from the archive, so they may hold newlines or terminal escapes that
    would otherwise forge log lines. A literal backslash is doubled, so that it cannot pass
    for one of the escapes.
    """
    text = escape(name.replace("\\", "\\\\"))
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'"


def decode_name(raw: bytes) -> str:
    # Linux file names are bytes; surrogateescape keeps any byte and os.* writes it back.
    return raw.decode("utf-8", "surrogateescape")


def cstr(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def parse_number(field: bytes, what: str) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit is set."""
    if field and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:  # negative base-256
            value -= 1 << (8 * (len(field) - 1))
        elif field[0] != 0x80:
            raise corrupt(f"tar header has a malformed {what} field")
        return value
    text = cstr(field).strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise corrupt(f"tar header has a malformed {what} field") from None


def is_zero_block(block: bytes) -> bool:
    return block.count(0) == len(block)


def parse_header(block: bytes) -> Header:
    """Decode one header block. Raises CorruptArchive when the checksum does not match."""
    if len(block) != BLOCK:
        raise corrupt("archive ends inside a tar header")
    stored = parse_number(block[148:156], "checksum")
    masked = block[:148] + b"        " + block[156:]
    unsigned = sum(masked)
    # Some old tar programs summed signed bytes; only compute that when the usual sum fails.
    if stored != unsigned and stored != unsigned - 256 * sum(1 for b in masked if b > 127):
        raise corrupt("tar header checksum does not match (not a tar archive, or damaged)")
    name = cstr(block[0:100])
    magic = block[257:263]
    if magic == b"ustar\x00":  # POSIX ustar: a prefix field extends the name
        prefix = cstr(block[345:500])
        if prefix:
            name = prefix + b"/" + name
    # The name may still be replaced by a GNU long-name header or a pax `path` record, so the
    # v7 trailing-slash rule is not applied here but to the final name (`v7_folder`).
    typeflag = block[156:157]
    return Header(
        name=decode_name(name),
        mode=parse_number(block[100:108], "mode"),
        size=parse_number(block[124:136], "size"),
        mtime=float(parse_number(block[136:148], "mtime")),
        typeflag=typeflag,
        linkname=decode_name(cstr(block[157:257])),
    )


def data_size(header: Header) -> int:
    """Bytes of data that follow the header in the archive, decided by the raw typeflag.

    Only regular files carry data, as in POSIX and Python's tarfile. It holds whatever the
    member becomes later (a v7 folder): the data is always skipped by this size, so no byte
    of a file's content can ever be read as a header.
    """
    return header.size if header.typeflag in DATA_TYPES else 0


def v7_folder(header: Header, named_by_extension: bool) -> Header:
    """Pre-POSIX archives mark folders only by a trailing slash on a regular-file header.

    The rule looks at the final name, and only when no GNU long-name header or pax `path`
    record gave it: GNU tar and Python's tarfile cut a long name at 100 bytes into the ustar
    name field, which then ends with '/' whenever byte 100 of the path is one.
    """
    if not named_by_extension and header.typeflag in V7_REGULAR and header.name.endswith("/"):
        header.typeflag = b"5"
    return header


def check_extension_size(header: Header) -> None:
    """Pax and long-name headers are read into memory, so their size is bounded."""
    if header.size < 0 or header.size > MAX_LONG_HEADER:
        raise limit_exceeded(
            f"extended header before member {show(header.name)} declares {header.size} bytes "
            f"(at most {MAX_LONG_HEADER} allowed)"
        )


def parse_pax(data: bytes) -> dict[str, str]:
    """Pax records: `<length> <key>=<value>\\n`, where length counts the whole record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # padding
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise corrupt("pax header is malformed")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise corrupt("pax header is malformed") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1 : end] != b"\n":
            raise corrupt("pax header is malformed")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise corrupt("pax header is malformed")
        records[key.decode("utf-8", "replace")] = decode_name(value)
        pos = end
    return records


def apply_pax(header: Header, records: dict[str, str]) -> Header:
    """Apply the pax keys that matter for restoring; the rest (uname, atime...) is ignored."""
    if any(key.startswith("GNU.sparse.") for key in records):
        raise unsafe(f"member {show(records.get('path', header.name))}: sparse files are not supported")
    if "path" in records:
        header.name = records["path"]
    if "linkpath" in records:
        header.linkname = records["linkpath"]
    try:
        if "size" in records:
            header.size = int(records["size"])
        if "mtime" in records:
            header.mtime = float(records["mtime"])
    except ValueError:
        raise corrupt(f"pax header of member {show(header.name)} has a malformed number") from None
    return header


def normalise(name: str, what: str = "member", room: int = PATH_MAX - 1) -> list[str]:
    """Split a member name into safe components, or refuse it.

    Refused: empty names, NUL, absolute paths, `..` anywhere, names longer than PATH_MAX,
    a component longer than NAME_MAX, and a normalised path longer than `room`: the bytes
    left for it once the runner's own prefix (the target and `.daoflow-restore/previous/`)
    is put in front. Checked here, up front, so that no system call fails on it later.
    `.` components and doubled slashes are dropped (`./a//b` is `a/b`).
    """
    if name == "":
        raise unsafe(f"{what} has an empty name")
    if "\x00" in name:
        raise unsafe(f"{what} {show(name)}: name contains NUL")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        raise unsafe(f"{what} {show(name)}: name is longer than {MAX_PATH_BYTES} bytes")
    if name.startswith("/"):
        raise unsafe(f"{what} {show(name)}: absolute paths are refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise unsafe(f"{what} {show(name)}: '..' components are refused")
    lengths = [len(p.encode("utf-8", "surrogateescape")) for p in parts]
    if lengths and max(lengths) > NAME_MAX:
        raise unsafe(
            f"{what} {show(name)}: a name component is {max(lengths)} bytes long, longer than "
            f"the {NAME_MAX} bytes a file name may have"
        )
    total = sum(lengths) + max(len(parts) - 1, 0)
    if total > room:
        raise unsafe(
            f"{what} {show(name)}: the path is {total} bytes long; below the target's own path "
            f"and the runner's staging prefix at most {room} bytes fit in the {PATH_MAX}-byte "
            "path limit"
        )
    return parts


def check_symlink_target(parts: list[str], target: str, name: str) -> None:
    """A symlink must point inside the tree, judged from the directory that holds it.

    The rule is stricter than "the normalised target stays inside": `..` may appear only at
    the start of the target. Otherwise `s -> .` followed by `t -> s/..` would look harmless
    (`s/..` normalises to `.`) yet resolve to the parent of the target once followed.
    With leading `..` only, and parents that are real directories (the unpacker guarantees
    it), following any chain of accepted links never leaves the tree.
    """
    if target == "":
        raise unsafe(f"symlink {show(name)}: empty target")
    if "\x00" in target:
        raise unsafe(f"symlink {show(name)}: target contains NUL")
    if target.startswith("/"):
        raise unsafe(f"symlink {show(name)} -> {show(target)}: absolute targets point outside the target")
    if len(target.encode("utf-8", "surrogateescape")) > PATH_MAX - 1:
        raise unsafe(f"symlink {show(name)}: its target is longer than {PATH_MAX - 1} bytes")
    ups = 0
    seen_name = False
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if seen_name:
                raise unsafe(
                    f"symlink {show(name)} -> {show(target)}: '..' after a name may be followed "
                    "out of the target"
                )
            ups += 1
        else:
            seen_name = True
    depth = len(parts) - 1  # directories above the link inside the tree
    if ups > depth:
        raise unsafe(f"symlink {show(name)} -> {show(target)}: points outside the target")


def safe_mode(mode: int) -> int:
    """Permission bits to restore: setuid and setgid are always dropped; sticky is kept."""
    return stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID)


def check_member(header: Header, room: int = PATH_MAX - 1) -> Member:
    """Turn a decoded header into a Member, or refuse it with a message naming it.

    `room`: the longest path that fits below the runner's prefix (see `normalise`).
    """
    flag = header.typeflag
    if flag in _REFUSED_TYPES:
        raise unsafe(f"member {show(header.name)}: {_REFUSED_TYPES[flag]}")
    kind = _TYPES.get(flag)
    if kind is None:
        raise unsafe(f"member {show(header.name)}: unknown member type {flag!r}")
    parts = normalise(header.name, room=room)
    if not parts:
        if kind == DIRECTORY:  # "./" itself: the target root, nothing to create
            return Member(path="", kind=DIRECTORY, mode=safe_mode(header.mode), size=0,
                          mtime=header.mtime)
        raise unsafe(f"member {show(header.name)}: names the target itself")
    if parts[0] in RESERVED_TOP_LEVEL:
        raise unsafe(f"member {show(header.name)}: {parts[0]} is reserved for the runner")
    if header.size < 0:
        raise corrupt(f"member {show(header.name)}: negative size")
    linkname = ""
    if kind == SYMLINK:
        check_symlink_target(parts, header.linkname, header.name)
        linkname = header.linkname
    elif kind == HARDLINK:
        # A hard link names another member by its path from the archive root.
        link_parts = normalise(header.linkname, what=f"hard link {show(header.name)} target", room=room)
        if not link_parts:
            raise unsafe(f"hard link {show(header.name)}: target is the target root")
        linkname = "/".join(link_parts)
    return Member(
        path="/".join(parts),
        kind=kind,
        mode=safe_mode(header.mode),
        size=header.size if kind == REGULAR else 0,
        mtime=header.mtime,
        linkname=linkname,
    )


@dataclass
class Budget:
    """Counts members and bytes against the plan's limits (decompression bombs)."""

    max_members: int
    max_bytes: int
    members: int = 0
    bytes: int = 0

    def admit_padding(self, size: int) -> None:
        """Zero padding after the end-of-archive marker costs time like data does."""
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise limit_exceeded(
                f"the zero padding after the end-of-archive marker brings the unpacked size to "
                f"{self.bytes} bytes, above the limit of {self.max_bytes}"
            )

    def admit(self, member_name: str, size: int) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise limit_exceeded(
                f"member {show(member_name)} is member number {self.members}, above the limit "
                f"of {self.max_members}"
            )
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise limit_exceeded(
                f"member {show(member_name)} brings the unpacked size to {self.bytes} bytes, "
                f"above the limit of {self.max_bytes}"
            )
