"""Benchmark of the restore runner against plain `tar -x` on the same artifact.

    python bench/runner_bench.py [--size-mib 1024] [--formats tar+zstd,tar+gzip] [--sources s3,file]
                                 [--readers own,libarchive] [--repeat 3] [--differential]

For each format it builds one artifact of about --size-mib of unpacked data (half random,
half base64 text, so that compression has work to do), then times:
  runner      python -m daoflow_operator.runner from the local S3 server and from a local file,
              as the Job runs it (durable: it flushes the target volume before committing);
  runner-nosync  the same from S3 and from the local file with DAOFLOW_RUNNER_SYNC=false, which
              is what `tar -x` does (it never flushes), so the ratio compares like with like;
  sha256sum + tar -x, and tar -x alone, on the same file.
It prints MB/s (of unpacked data) and the runner's peak RSS (VmHWM), then the ratios. The artifact is
read once before each timed run so that every run finds it in the page cache.
--readers runs the runner rows once per tar reader (DAOFLOW_RUNNER_TAR_READER), in one table.
--repeat N runs every row N times, in rounds so that a change of load hits all rows alike, and
keeps each row's fastest run (the least disturbed by other work on the machine).
--differential also runs, per reader, the differential tar corpus
(tests/runner/test_runner_differential.py, counting with DAOFLOW_FUZZ_TALLY=1) and the hostile
archive corpus (tests/runner/test_runner_malicious.py), and prints their counts.
Timings are printed, never asserted. The S3 source is Versity's S3 gateway, built once from its
pinned Go module (as the tests do); uploads need boto3 (the test extra).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

RUNNER = [sys.executable, "-m", "daoflow_operator.runner"]
MIB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tree(root: str, size_mib: int) -> int:
    """Files of 1-16 MiB plus a few thousand small ones; returns the bytes written."""
    os.makedirs(root)
    written = 0
    target = size_mib * MIB
    small_dir = os.path.join(root, "small")
    os.makedirs(small_dir)
    i = 0
    while written < target // 20:  # ~5% in small files of 1-64 KiB
        n = 1024 * (1 + i % 64)
        with open(os.path.join(small_dir, f"s{i:06d}"), "wb") as f:
            f.write(os.urandom(n))
        written += n
        i += 1
    j = 0
    while written < target:
        n = min(MIB * (1 + j % 16), target - written)
        sub = os.path.join(root, f"d{j % 8}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{j:05d}.bin"), "wb") as f:
            left = n
            while left:
                step = min(left, 4 * MIB)
                if j % 2:
                    data = base64.b64encode(os.urandom(step * 3 // 4 + 3))[:step]
                else:
                    data = os.urandom(step)
                f.write(data)
                left -= step
        written += n
        j += 1
    return written


def build_artifacts(tree: str, out: str, formats: list[str]) -> dict[str, str]:
    plain = os.path.join(out, "bench.tar")
    subprocess.run(["tar", "-C", tree, "-cf", plain, "."], check=True)
    arts = {}
    if "tar+zstd" in formats:
        path = plain + ".zst"
        if shutil.which("zstd"):
            subprocess.run(["zstd", "-q", "-3", "-T0", "-f", plain, "-o", path], check=True)
        else:
            import zstandard
            with open(plain, "rb") as src, open(path, "wb") as dst:
                zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, dst)
        arts["tar+zstd"] = path
    if "tar+gzip" in formats:
        path = plain + ".gz"
        with open(path, "wb") as dst:
            subprocess.run(["gzip", "-1", "-c", plain], stdout=dst, check=True)
        arts["tar+gzip"] = path
    if "tar" in formats:
        arts["tar"] = plain
    return arts


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def warm(path: str) -> None:
    """Before each timed run: the artifact in the page cache, and no dirty data left by
    earlier runs (or the upload) for this run's flush to wait for."""
    os.sync()
    with open(path, "rb") as f:
        while f.read(16 * MIB):
            pass


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one command.

    The peak comes from VmHWM in /proc/<pid>/status, sampled until the process exits. The
    rusage of wait4 would not do: a child forked from this (large) Python process inherits
    its high-water mark across exec.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    status_file = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status_file) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
                        break
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd}\n{proc.stderr.read().decode()}")
    return elapsed, peak


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3:
    def __init__(self, workdir: str):
        import boto3

        from daoflow_operator.localcluster import build

        binary = build.ensure_tool("versitygw", log=lambda msg: print(msg, file=sys.stderr))
        self.port = free_port()
        root = os.path.join(workdir, "s3-root")
        os.makedirs(root)
        self.log = open(os.path.join(workdir, "versitygw.log"), "wb")
        env = dict(os.environ, ROOT_ACCESS_KEY_ID="bench", ROOT_SECRET_ACCESS_KEY="bench-secret")
        self.proc = subprocess.Popen([str(binary), "--port", f"127.0.0.1:{self.port}", "posix", root],
                                     stdout=self.log, stderr=self.log, env=env)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("the S3 server did not start")
                time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                                   aws_access_key_id="bench", aws_secret_access_key="bench-secret")
        self.client.create_bucket(Bucket="bench")
        self.creds = os.path.join(workdir, "s3-creds")
        os.makedirs(self.creds)
        for k, v in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench-secret")):
            with open(os.path.join(self.creds, k), "w") as f:
                f.write(v)

    def upload(self, key: str, path: str) -> None:
        from boto3.s3.transfer import TransferConfig
        self.client.upload_file(path, "bench", key,
                                Config=TransferConfig(multipart_threshold=1 << 40))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


def run_runner(workdir: str, artifact: str, fmt: str, source: dict, key: str,
               sync: bool = True, reader: str = "own") -> tuple[float, int]:
    target = os.path.join(workdir, "target")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    plan = {
        "artifact": {"path": key, "format": fmt, "sizeBytes": os.path.getsize(artifact),
                     "sha256": sha256_file(artifact)},
        "source": source,
        "target": {"type": "volume", "mountPath": target},
    }
    plan_file = os.path.join(workdir, "plan.json")
    with open(plan_file, "w") as f:
        json.dump(plan, f)
    env = dict(os.environ, DAOFLOW_RUNNER_SYNC="true" if sync else "false",
               DAOFLOW_RUNNER_TAR_READER=reader)
    warm(artifact)
    return timed(RUNNER + ["--plan", plan_file, "--report", os.path.join(workdir, "report.json")],
                 env=env)


def tar_flag(fmt: str) -> list[str]:
    return {"tar+zstd": ["--zstd"], "tar+gzip": ["-z"], "tar": []}[fmt]


def run_tar(workdir: str, artifact: str, fmt: str, with_sha: bool) -> tuple[float, int]:
    out = os.path.join(workdir, "tar-out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    warm(artifact)
    tar = " ".join(["tar", "-x", *tar_flag(fmt), "-f", artifact, "-C", out])
    cmd = f"sha256sum {artifact} >/dev/null && {tar}" if with_sha else tar
    return timed(["sh", "-c", cmd])[0], 0


def pytest_counts(args: list[str], env: dict) -> tuple[str, str]:
    """Run one pytest session; return its last summary line and the corpus line, if any."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *args],
                          cwd=REPO, env=dict(os.environ, **env), capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    corpus = [line for line in lines if re.search(r"archives compared", line)]
    summary = [line for line in lines if re.search(r"\d+ (passed|failed)", line)]
    return (summary[-1].strip("= ") if summary else f"pytest exited {proc.returncode}",
            corpus[-1] if corpus else "")


def differential(readers: list[str]) -> list[tuple[str, str, str]]:
    """Per reader: the differential corpus's counts and the hostile corpus's pass count."""
    out = []
    for reader in readers:
        _, corpus = pytest_counts(
            [f"tests/runner/test_runner_differential.py::test_differential_corpus[{reader}]"],
            {"DAOFLOW_FUZZ_TALLY": "1"})
        found = re.search(r"(\d+) archives compared: (\d+) equal .*?, (\d+) refused, (\d+) different", corpus)
        diff = ("{1} of {0} equal, {2} refused, {3} different".format(*found.groups())
                if found else "no result")
        hostile, _ = pytest_counts(["tests/runner/test_runner_malicious.py", "-k", "hostile"],
                                   {"DAOFLOW_RUNNER_TAR_READER": reader})
        out.append((reader, diff, hostile))
    return out


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, load {load}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=int(os.environ.get("DAOFLOW_BENCH_SIZE_MIB", "1024")))
    ap.add_argument("--formats", default="tar+zstd,tar+gzip")
    ap.add_argument("--sources", default="s3,file")
    ap.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    ap.add_argument("--readers", default="own", help="tar readers of the runner: own,libarchive")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest is kept")
    ap.add_argument("--differential", action="store_true",
                    help="also run the differential and hostile corpora per reader")
    args = ap.parse_args()
    formats = args.formats.split(",")
    sources = args.sources.split(",")
    readers = args.readers.split(",")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}", flush=True)
    workdir = args.workdir or tempfile.mkdtemp(prefix="daoflow-bench-")
    os.makedirs(workdir, exist_ok=True)
    s3 = None
    try:
        print(f"building {args.size_mib} MiB of data in {workdir} ...", flush=True)
        data_bytes = make_tree(os.path.join(workdir, "tree"), args.size_mib)
        arts = build_artifacts(os.path.join(workdir, "tree"), workdir, formats)
        shutil.rmtree(os.path.join(workdir, "tree"))
        if "s3" in sources:
            s3 = S3(workdir)
            for fmt, path in arts.items():
                s3.upload(os.path.basename(path), path)
        mb = data_bytes / 1e6
        runs = []  # (format, reader or "", run name, thunk)
        for fmt, path in arts.items():
            key = os.path.basename(path)
            for reader in readers:
                if "s3" in sources:
                    s3_source = {"type": "s3", "endpoint": s3.endpoint, "allowInsecureHTTP": True, "bucket": "bench",
                                 "region": "us-east-1", "forcePathStyle": True,
                                 "credentialsDir": s3.creds}
                    runs.append((fmt, reader, "runner (S3)", lambda p=path, f=fmt, r=reader, s=s3_source, k=key:
                                 run_runner(workdir, p, f, s, k, reader=r)))
                    runs.append((fmt, reader, "runner (S3, no sync)",
                                 lambda p=path, f=fmt, r=reader, s=s3_source, k=key:
                                 run_runner(workdir, p, f, s, k, sync=False, reader=r)))
                if "file" in sources:
                    vol = {"type": "volume", "mountPath": workdir}
                    runs.append((fmt, reader, "runner (file)", lambda p=path, f=fmt, r=reader, v=vol, k=key:
                                 run_runner(workdir, p, f, v, k, reader=r)))
                    runs.append((fmt, reader, "runner (file, no sync)",
                                 lambda p=path, f=fmt, r=reader, v=vol, k=key:
                                 run_runner(workdir, p, f, v, k, sync=False, reader=r)))
            runs.append((fmt, "", "sha256sum + tar -x", lambda p=path, f=fmt: run_tar(workdir, p, f, True)))
            runs.append((fmt, "", "tar -x", lambda p=path, f=fmt: run_tar(workdir, p, f, False)))
        best: dict[tuple, tuple[float, int]] = {}
        for round_ in range(args.repeat):  # rounds: a change of load hits every row alike
            for fmt, reader, name, run in runs:
                secs, rss = run()
                old = best.get((fmt, reader, name))
                best[(fmt, reader, name)] = (min(secs, old[0]), max(rss, old[1])) if old else (secs, rss)
        print()
        print(f"unpacked data: {data_bytes / MIB:.0f} MiB; MB/s counts unpacked bytes; "
              "ratio = speed / speed of `tar -x` alone (goal >= 0.8); "
              f"fastest of {args.repeat} run(s); after the runs: {machine()}")
        print(f"{'format':<9} {'artifact MiB':>12}  {'reader':<10} {'run':<24} {'seconds':>8} "
              f"{'MB/s':>8} {'peak RSS MiB':>12} {'ratio':>6}")
        for fmt, reader, name, _ in runs:
            secs, rss = best[(fmt, reader, name)]
            base = best[(fmt, "", "tar -x")][0]
            rss_text = f"{rss / MIB:.1f}" if reader else "-"
            size = os.path.getsize(arts[fmt]) / MIB
            print(f"{fmt:<9} {size:12.0f}  {reader or '-':<10} {name:<24} {secs:8.2f} {mb / secs:8.1f} "
                  f"{rss_text:>12} {base / secs:6.2f}")
        if args.differential:
            print()
            print(f"{'reader':<10}  {'differential tar corpus (vs GNU tar)':<44}  hostile archive corpus")
            for reader, diff, hostile in differential(readers):
                print(f"{reader:<10}  {diff:<44}  {hostile}")
    finally:
        if s3:
            s3.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
