"""S3 clients side by side: one GET of the same object from the local S3 server.

    python bench/s3_clients.py [--size-mib 1024] [--chunk-mib 1] [--repeat 5] [--clients ...]

Clients (each runs in its own process, so that its peak RSS is its own):
  http.client  a GET on the standard library, signed with botocore's SigV4 signer and read with
               readinto() into 1 MiB buffers: what the runner's former hand-written client did;
               the baseline of the ratios
  botocore     get_object() and StreamingBody.iter_chunks(chunk)
  obstore      obstore.get(...).stream(min_chunk_size=chunk) (Rust's object_store); optional:
               skipped when it cannot be imported (it is not a dependency of the project)
  runner       daoflow_operator.runner.s3.S3Object.chunks(), as the restore Job fetches
It prints MB/s and peak RSS (VmHWM, sampled from /proc) of each, best of --repeat rounds (the
clients take turns within a round), then the ratio to http.client. Timings are printed, never
asserted. The server is Versity's S3 gateway, built once from its pinned Go module (as the tests
do); uploads need boto3 (the test extra).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MIB = 1 << 20
CLIENTS = ("http.client", "botocore", "obstore", "runner")
ACCESS_KEY, SECRET_KEY, BUCKET, KEY = "bench", "bench-secret", "bench", "object.bin"


# --- the children: one GET each, printing the bytes read ------------------------------------


def _get_http_client(endpoint: str, chunk: int) -> int:
    import http.client
    from urllib.parse import urlsplit

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from daoflow_operator.runner.s3 import read_chunk  # the former client's read loop, kept

    url = f"{endpoint}/{BUCKET}/{KEY}"
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", parts.path, headers=dict(request.headers.items()))
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    total = 0
    while buf := read_chunk(resp.readinto, chunk):
        total += len(buf)
    return total


def _get_botocore(endpoint: str, chunk: int) -> int:
    import botocore.session
    from botocore.config import Config

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, config=Config(s3={"addressing_style": "path"}))
    body = client.get_object(Bucket=BUCKET, Key=KEY)["Body"]
    return sum(len(c) for c in body.iter_chunks(chunk))


def _get_obstore(endpoint: str, chunk: int) -> int:
    import obstore
    from obstore.store import S3Store

    store = S3Store(BUCKET, endpoint=endpoint, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                    region="us-east-1", virtual_hosted_style_request=False,
                    client_options={"allow_http": True})
    return sum(len(memoryview(c)) for c in obstore.get(store, KEY).stream(min_chunk_size=chunk))


def _get_runner(endpoint: str, chunk: int) -> int:
    from daoflow_operator.runner import s3

    with tempfile.TemporaryDirectory() as creds:
        for name, value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY)):
            with open(os.path.join(creds, name), "w") as f:
                f.write(value)
        obj = s3.S3Object(endpoint=endpoint, bucket=BUCKET, key=KEY, region="us-east-1",
                          force_path_style=True, credentials=s3.read_credentials(creds))
        return sum(len(c) for c in obj.chunks(chunk))


def child(client: str, endpoint: str, chunk: int) -> None:
    fetch = {"http.client": _get_http_client, "botocore": _get_botocore, "obstore": _get_obstore,
             "runner": _get_runner}[client]
    start = time.perf_counter()
    total = fetch(endpoint, chunk)
    print(total, time.perf_counter() - start)


# --- the parent ----------------------------------------------------------------------------


def timed_output(cmd: list[str]) -> tuple[str, int]:
    """stdout and peak RSS (VmHWM, sampled from /proc until exit) of one command. As in
    runner_bench.timed, but keeping the child's output: it reports its own byte count and time."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak = max([peak] + [int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.01)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd}\n{err}")
    return out, peak


def measure(client: str, endpoint: str, chunk: int) -> tuple[int, float, int]:
    """(bytes, seconds, peak RSS bytes) of one GET in a child process."""
    out, peak = timed_output([sys.executable, __file__, "--child", client, "--endpoint", endpoint,
                              "--chunk-mib", str(chunk // MIB)])
    size, seconds = out.split()
    return int(size), float(seconds), peak


def available(client: str) -> bool:
    if client != "obstore":
        return True
    return subprocess.run([sys.executable, "-c", "import obstore"], capture_output=True).returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--child")
    parser.add_argument("--endpoint")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.endpoint, args.chunk_mib * MIB)
        return 0
    from runner_bench import S3

    clients = [c for c in args.clients.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="daoflow-s3-bench-") as work:
        s3 = S3(work)
        try:
            path = os.path.join(work, "object.bin")
            with open(path, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MIB))
            s3.upload(KEY, path)
            os.unlink(path)
            for client in [c for c in clients if not available(c)]:
                print(f"{client}: not importable, skipped", file=sys.stderr)
                clients.remove(client)
            runs: dict[str, list] = {c: [] for c in clients}
            # Round-robin, so that a busy moment of the machine does not fall on one client only.
            for _ in range(args.repeat):
                for client in clients:
                    size, seconds, peak = measure(client, s3.endpoint, args.chunk_mib * MIB)
                    assert size == args.size_mib * MIB, (client, size)
                    runs[client].append((seconds, peak))
            rows = [(c, args.size_mib * MIB / min(r[0] for r in runs[c]) / 1e6, max(r[1] for r in runs[c]))
                    for c in clients]
        finally:
            s3.close()
    base = next((mbs for name, mbs, _ in rows if name == "http.client"), None)
    print(f"\nGET of a {args.size_mib} MiB object from the local S3 server, {args.chunk_mib} MiB chunks, "
          f"best of {args.repeat}")
    print(f"| client | MB/s | peak RSS (MiB) | vs http.client |\n|---|---:|---:|---:|")
    for name, mbs, peak in rows:
        ratio = f"{mbs / base:.2f}x" if base else "-"
        print(f"| {name} | {mbs:.0f} | {peak / MIB:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
