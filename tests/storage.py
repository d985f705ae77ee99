"""Real storage shared by the runner tests and the real-node tests: an S3 server (Versity's S3
gateway, built from its Go module) and PostgreSQL from Debian, both started on loopback with free
ports, once per session. Pods on the real node reach them through the node's relays (node.forward).
A missing tool fails the tests rather than skipping them: CI installs and builds both
(hack/install-storage.sh, and the pinned build in daoflow_operator.localcluster).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def write_s3_credentials(directory: Path, access_key: str, secret: str, token: str = "") -> Path:
    """The files of an S3 credentials Secret, as the runner reads them from its mount."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "AWS_ACCESS_KEY_ID").write_text(access_key + "\n")
    (directory / "AWS_SECRET_ACCESS_KEY").write_text(secret + "\n")
    if token:
        (directory / "AWS_SESSION_TOKEN").write_text(token)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not listen on port {port} within {timeout}s")


# --- S3 -------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    port: int
    bucket: str
    access_key: str
    secret_key: str
    client: object
    creds_dir: Path
    root: Path | None = None  # the gateway's POSIX folder: a second gateway may serve it too
    ca_file: Path | None = None  # the CA that signed the server's certificate, when it speaks TLS

    def upload(self, key: str, path: Path | str) -> None:
        with open(path, "rb") as f:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=f)

    def upload_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def source(self, prefix: str = "", path_style: bool = True, creds_dir: Path | None = None,
               from_environment: bool = False, ca_file: Path | None = None) -> dict:
        """A plan's source. `from_environment`: no credentials folder, the default chain applies."""
        source = {
            "type": "s3", "endpoint": self.endpoint, "bucket": self.bucket, "region": "us-east-1",
            "allowInsecureHTTP": self.endpoint.startswith("http://"),
            "prefix": prefix, "forcePathStyle": path_style,
        }
        if not from_environment:
            source["credentialsDir"] = str(creds_dir or self.creds_dir)
        if ca_file is not None:
            source["caBundleFile"] = str(ca_file)
        return source


# Names and addresses the test server's certificate is valid for: loopback, and the address at
# which pods on the local node reach the host (localcluster.node.NODE_IP, through node.forward).
TLS_NAMES = ("DNS:localhost", "IP:127.0.0.1", "IP:10.88.0.1")


def make_test_ca(directory: Path, names: tuple[str, ...] = TLS_NAMES) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed, with openssl: (ca.crt, server.crt, server.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "server.key", directory / "server.csr", directory / "server.crt"
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName={','.join(names)}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca_crt),
            "-days", "3", "-subj", "/CN=daoflow test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(crt), "-days", "3", "-extfile", str(ext))
    return ca_crt, crt, key


@contextlib.contextmanager
def versitygw(root: Path, log_dir: Path, access_key: str, secret_key: str, tls: tuple[Path, Path] | None = None):
    """One gateway on a free loopback port, serving `root`; yields its port. `tls`: (cert, key)."""
    from daoflow_operator.localcluster import build

    binary = build.ensure_tool("versitygw", log=lambda msg: print(msg, file=sys.stderr))
    port = free_port()
    log = open(log_dir / "versitygw.log", "wb")
    # Credentials through the environment, so they do not show in the process list.
    env = dict(os.environ, ROOT_ACCESS_KEY_ID=access_key, ROOT_SECRET_ACCESS_KEY=secret_key)
    extra = ["--cert", str(tls[0]), "--key", str(tls[1])] if tls else []
    proc = subprocess.Popen(
        [str(binary), "--port", f"127.0.0.1:{port}", "--region", "us-east-1", "--virtual-domain", "localhost",
         *extra, "posix", str(root)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    try:
        wait_for_port(port, proc, "versitygw")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    """Versity's S3 gateway (a production server) on a POSIX folder. It checks every request's
    SigV4 signature, so the runner's signing is verified by a real server, not assumed."""
    import secrets

    import boto3

    root = tmp_path_factory.mktemp("s3-root")
    access_key, secret_key = "DAOFLOW" + secrets.token_hex(6).upper(), secrets.token_hex(20)
    with versitygw(root, tmp_path_factory.mktemp("s3-log"), access_key, secret_key) as port:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=access_key, aws_secret_access_key=secret_key)
        client.create_bucket(Bucket="backups")
        creds = write_s3_credentials(tmp_path_factory.mktemp("s3-credentials"), access_key, secret_key)
        yield S3Server(endpoint, port, "backups", access_key, secret_key, client, creds, root=root)


@pytest.fixture(scope="session")
def s3_tls(s3: S3Server, tmp_path_factory) -> S3Server:
    """A second gateway over HTTPS on the same folder, keys and bucket as `s3` (an object uploaded
    through either is served by both), with a certificate signed by a throwaway CA (`ca_file`)."""
    ca, cert, key = make_test_ca(tmp_path_factory.mktemp("s3-tls"))
    with versitygw(s3.root, tmp_path_factory.mktemp("s3-tls-log"), s3.access_key, s3.secret_key,
                   tls=(cert, key)) as port:
        yield S3Server(f"https://127.0.0.1:{port}", port, s3.bucket, s3.access_key, s3.secret_key, s3.client,
                       s3.creds_dir, root=s3.root, ca_file=ca)


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    password: str
    bin_dir: str

    @property
    def env(self) -> dict:
        return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER="postgres",
                    PGPASSWORD=self.password)

    def psql(self, sql: str, db: str = "postgres") -> str:
        proc = subprocess.run(
            [os.path.join(self.bin_dir, "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", db, "-c", sql],
            env=self.env, capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise AssertionError(f"psql failed: {proc.stderr}")
        return proc.stdout.strip()

    def pg_dump(self, db: str, out: Path) -> Path:
        subprocess.run([os.path.join(self.bin_dir, "pg_dump"), "-Fc", "-d", db, "-f", str(out)],
                       env=self.env, check=True, timeout=300)
        return out


def _postgres_bin_dir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not found:
        pytest.fail("PostgreSQL server binaries are missing: run hack/install-storage.sh")
    return os.path.dirname(found[-1])


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    """A throwaway PostgreSQL with password (scram) authentication on a free loopback port.

    initdb and postgres refuse to run as root, so as root they run as the `postgres` user
    (created by Debian's package) through runuser, in a folder that user owns.
    """
    bin_dir = _postgres_bin_dir()
    as_user: list[str] = []
    base = tempfile.mkdtemp(prefix="daoflow-pg-")
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root needs the 'postgres' user (Debian's postgresql package)")
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.fail("running as root needs runuser (util-linux) to start PostgreSQL")
        as_user = [runuser, "-u", "postgres", "--"]
        os.chown(base, pw.pw_uid, pw.pw_gid)
    password = "pg-super-" + os.urandom(6).hex()
    pwfile = os.path.join(base, "pwfile")
    with open(pwfile, "w") as f:
        f.write(password + "\n")
    if as_user:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    data = os.path.join(base, "data")
    subprocess.run(
        as_user + [os.path.join(bin_dir, "initdb"), "-D", data, "-U", "postgres",
                   "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C",
                   "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )
    port = free_port()
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = os.path.join(bin_dir, "pg_ctl")
    logfile = os.path.join(base, "server.log")
    started = subprocess.run(as_user + [pg_ctl, "-D", data, "-l", logfile, "-w", "-t", "60",
                                        "-o", opts, "start"], capture_output=True, text=True)
    if started.returncode != 0:
        log = open(logfile).read() if os.path.exists(logfile) else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log}")
    try:
        yield Postgres(port=port, password=password, bin_dir=bin_dir)
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
