"""Differential testing of the runner's tar reader: archives written by GNU tar, bsdtar and
Python's tarfile, in every format each supports (v7, ustar, gnu, pax), plain, gzip and zstd,
from trees that Hypothesis generates. The oracle is GNU tar: the tree the runner restores
must equal what `tar -xpf` extracts from the same archive (names, kinds, modes with setuid and
setgid dropped, contents, symlink targets, hard-link sharing). A member the runner refuses
must fail the restore with a report naming it; none may be dropped silently.

A tool that cannot represent a tree in a format (v7 or ustar and a long name, say) fails, or
writes an archive from which GNU tar does not get the tree back: that combination is skipped
and counted as skipped, with why, never as a pass.

The corpus runs once per tar reader of the runner (`tarstream.READERS`: our own and
libarchive's, DAOFLOW_RUNNER_TAR_READER), so that the two can be compared on the same archives.

`make test` runs a fixed-seed corpus (DAOFLOW_FUZZ_SEED, DAOFLOW_FUZZ_EXAMPLES archives);
`make fuzz` a longer one with a random seed. Both print the seed and the counts; replay a
failure with `DAOFLOW_FUZZ_SEED=<seed> DAOFLOW_FUZZ_EXAMPLES=<n> pytest <this file>`. With
DAOFLOW_FUZZ_TALLY=1 a refusal or a difference is counted, not raised at once, so that one run
gives a reader's full counts (bench/runner_bench.py --differential); the test still fails at
the end if any was found.
"""

from __future__ import annotations

import collections
import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from daoflow_operator.runner.tarstream import READERS
from runner_testlib import compress_bytes, run_main, volume_plan, walk

SEED = int(os.environ.get("DAOFLOW_FUZZ_SEED", "20261128"))
ARCHIVES = int(os.environ.get("DAOFLOW_FUZZ_EXAMPLES", "500"))
TALLY = os.environ.get("DAOFLOW_FUZZ_TALLY", "") not in ("", "0", "false")

MAKERS = [
    ("gnutar", "v7"), ("gnutar", "ustar"), ("gnutar", "gnu"), ("gnutar", "posix"),
    ("bsdtar", "v7"), ("bsdtar", "ustar"), ("bsdtar", "gnutar"), ("bsdtar", "pax"),
    ("tarfile", "ustar"), ("tarfile", "gnu"), ("tarfile", "pax"),
]
COMPRESSIONS = ("tar", "tar+gzip", "tar+zstd")
# Where the ustar fields end (name 100, prefix 155, name + prefix 256) and NAME_MAX (255):
# the byte lengths of paths, and the byte positions of a '/' in them.
BOUNDARIES = (99, 100, 101, 155, 156, 255, 256)
FILL_CHARS = ("a", "é", "日", "😀")  # 1 to 4 UTF-8 bytes: a character may straddle a boundary
FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o400, 0o4755, 0o2750, 0o6711, 0o1644)
DIR_MODES = (0o755, 0o700, 0o750, 0o777, 0o1777, 0o2775)
MTIME = 1_650_000_000



# --- trees ------------------------------------------------------------------------------------


def fill(ch: str, nbytes: int, pad_first: bool) -> str:
    """A name component of exactly `nbytes` UTF-8 bytes made of `ch`, padded with 'x'."""
    count = nbytes // len(ch.encode())
    pad = "x" * (nbytes - count * len(ch.encode()))
    return pad + ch * count if pad_first else ch * count + pad


@st.composite
def boundary_paths(draw) -> str:
    """A path of a boundary length in bytes, with '/' at boundary positions."""
    total = draw(st.sampled_from(BOUNDARIES))
    inside = [p for p in BOUNDARIES if p < total - 1]
    slashes = sorted(draw(st.sets(st.sampled_from(inside)))) if inside else []
    positions, prev = [], 0
    for p in slashes:
        if p - prev >= 2:  # no empty component
            positions.append(p)
            prev = p
    cuts = [0] + positions + [total + 1]  # 1-based '/' positions; total+1 closes the last one
    lengths = [cuts[i + 1] - cuts[i] - 1 for i in range(len(cuts) - 1)]
    out = []
    for n in lengths:
        while n > 255:  # NAME_MAX: one more slash, not at a boundary
            out.append(128)
            n -= 129
        out.append(n)
    parts = [fill(draw(st.sampled_from(FILL_CHARS)), n, draw(st.booleans())) for n in out]
    path = "/".join(parts)
    assert len(path.encode()) == total, (path, total)
    return path


components = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"),
    min_size=1, max_size=12,
).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 255)

KINDS = ("file", "file", "empty", "dir", "symlink", "hardlink")


@st.composite
def trees(draw) -> dict[str, tuple]:
    """path -> ("dir", mode) | ("file", mode, bytes) | ("symlink", target path) |
    ("hardlink", path of a file)."""
    paths = draw(st.lists(st.lists(components, min_size=1, max_size=3).map("/".join),
                          min_size=1, max_size=6))
    paths += draw(st.lists(boundary_paths(), min_size=1, max_size=3))
    dirs = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    tree: dict[str, tuple] = {}
    for d in sorted(dirs):
        tree[d] = ("dir", draw(st.sampled_from(DIR_MODES)))
    pending = []
    for p in dict.fromkeys(paths):  # a path drawn twice is one entry
        if p in tree:
            continue
        kind = draw(st.sampled_from(KINDS))
        if kind in ("file", "empty"):
            data = draw(st.binary(max_size=1500)) if kind == "file" else b""
            tree[p] = ("file", draw(st.sampled_from(FILE_MODES)), data)
        elif kind == "dir":
            tree[p] = ("dir", draw(st.sampled_from(DIR_MODES)))
        else:
            pending.append((p, kind))
    for p, kind in pending:
        if kind == "hardlink":
            files = sorted(q for q, e in tree.items() if e[0] == "file" and q != p)
            if files:
                tree[p] = ("hardlink", draw(st.sampled_from(files)))
                continue
        else:
            others = sorted(q for q in tree if q != p)
            if others:
                tree[p] = ("symlink", draw(st.sampled_from(others)))
                continue
        tree[p] = ("file", 0o644, b"")
    return tree


def parts(path: str) -> tuple:
    return tuple(path.split("/"))


def build(tree: dict[str, tuple], root: Path) -> list[str]:
    """Write the tree; return its paths, parents first (the order the archive lists them)."""
    root.mkdir()
    order = sorted(tree, key=parts)
    for p in order:
        entry = tree[p]
        if entry[0] == "dir":
            (root / p).mkdir()
        elif entry[0] == "file":
            (root / p).write_bytes(entry[2])
            os.chmod(root / p, entry[1])
    for p in order:
        entry = tree[p]
        if entry[0] == "hardlink":
            os.link(root / entry[1], root / p)
        elif entry[0] == "symlink":
            os.symlink(os.path.relpath(entry[1], os.path.dirname(p) or "."), root / p)
    for p in reversed(order):
        if tree[p][0] == "dir":
            os.chmod(root / p, tree[p][1])
        os.utime(root / p, (MTIME, MTIME), follow_symlinks=False)
    return order


# --- archives ---------------------------------------------------------------------------------


def make_archive(tool: str, fmt: str, compression: str, root: Path, order: list[str],
                 out: Path, warned: list[str]) -> str | None:
    """Write the archive; return None, or why the tool could not (a skip). A tool's warnings
    (bsdtar leaves out a name too long for the format, with exit 0) go to `warned`."""
    listing = out.with_suffix(".list")
    listing.write_bytes(b"".join(p.encode() + b"\0" for p in order))
    zflag = {"tar": [], "tar+gzip": ["-z"], "tar+zstd": ["--zstd"]}[compression]
    if tool == "gnutar":
        cmd = ["tar", "-c", "-f", str(out), f"--format={fmt}", *zflag, "-C", str(root),
               "--no-recursion", "--null", "--verbatim-files-from", "-T", str(listing)]
    elif tool == "bsdtar":
        cmd = ["bsdtar", "-c", "-f", str(out), "--format", fmt, *zflag, "-n", "-C", str(root),
               "--null", "-T", str(listing)]
    else:
        fmt_id = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT,
                  "pax": tarfile.PAX_FORMAT}[fmt]
        plain = out.with_suffix(".plain")
        try:
            with tarfile.open(plain, "w", format=fmt_id) as tf:
                for p in order:
                    tf.add(root / p, arcname=p, recursive=False)
        except ValueError as e:
            return f"tarfile raises {e}"
        out.write_bytes(compress_bytes(plain.read_bytes(), compression))
        return None
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        return f"{tool} exits {proc.returncode}"
    warned.extend(line.rsplit(": ", 1)[-1] for line in proc.stderr.splitlines())
    return None


def gnu_extract(archive: Path, into: Path) -> None:
    into.mkdir()
    subprocess.run(["tar", "-x", "-p", "--no-same-owner", "-f", str(archive), "-C", str(into)],
                   check=True, capture_output=True)


def state(root: Path) -> tuple[dict, list]:
    """What the oracle compares: kind, mode (setuid/setgid dropped), content, link target,
    and the groups of paths sharing an inode."""
    out: dict[str, tuple] = {}
    inodes = collections.defaultdict(list)
    for dirpath, dirnames, filenames in walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st_ = os.lstat(path)
            mode = oct(stat.S_IMODE(st_.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))
            if stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", mode)
            elif stat.S_ISREG(st_.st_mode):
                with open(path, "rb") as f:
                    out[rel] = ("file", mode, hashlib.sha256(f.read()).hexdigest())
                inodes[(st_.st_dev, st_.st_ino)].append(rel)
            else:
                out[rel] = ("other", oct(st_.st_mode))
    links = sorted(tuple(sorted(g)) for g in inodes.values() if len(g) > 1)
    return out, links


def difference(a: tuple[dict, list], b: tuple[dict, list], names=("runner", "gnu tar")) -> str:
    lines = []
    for p in sorted(set(a[0]) | set(b[0])):
        if a[0].get(p) != b[0].get(p):
            lines.append(f"{p!r}: {names[0]} {a[0].get(p)} != {names[1]} {b[0].get(p)}")
    if a[1] != b[1]:
        lines.append(f"hard links: {names[0]} {a[1]} != {names[1]} {b[1]}")
    return "\n".join(lines[:10])


# --- the corpus -------------------------------------------------------------------------------


class Corpus:
    def __init__(self) -> None:
        self.compared = 0  # archives the runner restored or refused, compared with GNU tar
        self.equal = 0
        self.refused = 0  # a safe tree refused by the runner
        self.mismatched = 0  # restored, but not as GNU tar extracts it
        self.failures: list[str] = []  # with DAOFLOW_FUZZ_TALLY: the first few, to replay
        self.by_maker = collections.Counter()
        self.skipped = collections.Counter()  # (maker, why) -> count

    def fail(self, kind: str, message: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if not TALLY:
            pytest.fail(message)
        if len(self.failures) < 5:
            self.failures.append(message)


def check_archive(corpus: Corpus, work: Path, tree: dict, root: Path, order: list[str],
                  tool: str, fmt: str, compression: str) -> None:
    maker = f"{tool}-{fmt}"
    dest = work / f"dest-{maker}"
    dest.mkdir()
    artifact = dest / {"tar": "a.tar", "tar+gzip": "a.tar.gz", "tar+zstd": "a.tar.zst"}[compression]
    warned: list[str] = []
    why = make_archive(tool, fmt, compression, root, order, artifact, warned)
    if why is not None:
        corpus.skipped[(maker, f"the tool refuses the tree ({why})")] += 1
        return
    oracle = work / f"oracle-{maker}"
    gnu_extract(artifact, oracle)
    expected = state(oracle)
    if expected != state(root):
        # The tool truncated or changed the tree (v7 names, say): not a test of the runner.
        why = f"the tool warns '{sorted(set(warned))[0]}'" if warned else "no warning"
        corpus.skipped[(maker, f"GNU tar does not get the tree back from it ({why})")] += 1
        if os.environ.get("DAOFLOW_FUZZ_DEBUG"):  # with -s: what the tool left out
            print(maker, difference(expected, state(root), ("gnu tar", "tree")))
        return
    target = work / f"target-{maker}"
    target.mkdir()
    run = run_main(volume_plan(artifact, target, fmt=compression), work / f"job-{maker}")
    recipe = (f"{maker} {compression}, tree {tree!r}\narchive kept at {artifact}\n"
              f"report {run.report_text}\n{run.stderr[-2000:]}")
    corpus.compared += 1
    corpus.by_maker[(maker, compression)] += 1
    if run.code != 0:
        assert os.listdir(target) == [], recipe  # a failed restore restores nothing
        corpus.fail("refused", f"the runner refused a safe tree: {recipe}")
        return
    got = state(target)
    if got != expected or run.report["files"] != len(order):
        corpus.fail("mismatched", f"runner != gnu tar:\n{difference(got, expected)}\n{recipe}")
        return
    corpus.equal += 1
    shutil.rmtree(work / f"job-{maker}")


@pytest.mark.parametrize("reader", READERS)
def test_differential_corpus(reader, tmp_path, request, monkeypatch):
    # A missing tool fails the test, as a missing server does; it is never skipped.
    assert shutil.which("bsdtar"), "bsdtar is missing: `make test-deps` installs libarchive-tools"
    monkeypatch.setenv("DAOFLOW_RUNNER_TAR_READER", reader)
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[differential tar corpus] reader {reader}, seed {SEED}, {ARCHIVES} archives "
              f"(replay: DAOFLOW_FUZZ_SEED={SEED} DAOFLOW_FUZZ_EXAMPLES={ARCHIVES})", flush=True)
    corpus = Corpus()
    started = time.monotonic()
    round_ = 0
    # Each example archives its tree with every maker; rounds continue (seeds SEED, SEED+1...)
    # until ARCHIVES archives have been compared, however many combinations were skipped.
    while corpus.compared < ARCHIVES:
        left = ARCHIVES - corpus.compared
        examples = max(1, -(-left // 8))  # 11 makers a tree, about a quarter skipped

        @seed(SEED + round_)
        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck), print_blob=True)
        @given(tree=trees(), data=st.data())
        def one_tree(tree, data):
            work = Path(tempfile.mkdtemp(dir=tmp_path))
            root = work / "tree"
            order = build(tree, root)
            failed = corpus.refused + corpus.mismatched
            for tool, fmt in MAKERS:
                compression = data.draw(st.sampled_from(COMPRESSIONS), label=f"{tool}-{fmt}")
                check_archive(corpus, work, tree, root, order, tool, fmt, compression)
            if corpus.refused + corpus.mismatched == failed:
                shutil.rmtree(work)  # kept when a check fails: the message names the archive

        one_tree()
        round_ += 1
    elapsed = time.monotonic() - started
    skipped = sum(corpus.skipped.values())
    lines = [f"[differential tar corpus] reader {reader}, seed {SEED}: {corpus.compared} archives "
             f"compared: {corpus.equal} equal to GNU tar's extraction, {corpus.refused} refused, "
             f"{corpus.mismatched} different; {skipped} combinations skipped, {round_} round(s), "
             f"{elapsed:.1f}s"]
    for (maker, why), n in sorted(corpus.skipped.items()):
        lines.append(f"  skipped {n:4d} {maker}: {why}")
    with capture.global_and_fixture_disabled():
        print("\n".join(lines), flush=True)
    assert corpus.refused == corpus.mismatched == 0, "\n\n".join(corpus.failures)
    per_compression = collections.Counter(c for (_, c) in corpus.by_maker.elements())
    assert set(per_compression) == set(COMPRESSIONS), per_compression
    assert {m for (m, _) in corpus.by_maker} == {f"{t}-{f}" for t, f in MAKERS}, corpus.by_maker
