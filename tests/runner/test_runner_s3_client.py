"""The runner's S3 client against the real S3 server: static keys from a Secret's folder, the
default credential chain of the environment, and HTTPS with a private CA (a throwaway CA made with
openssl; a second gateway serves the same bucket over TLS)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import threading

import pytest

from runner_testlib import plan_for, run_runner, snapshot
from storage import S3Server, s3_tls  # noqa: F401 - the HTTPS gateway's session fixture
from daoflow_operator.runner import s3 as s3client
from daoflow_operator.runner.failures import RunnerFailure

FMT = "tar+zstd"
# The environment of a pod that has no credentials of its own: no instance metadata either.
NO_AMBIENT = {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": "/nonexistent",
              "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def restore_from(server: S3Server, sample, uploaded: dict, tmp_path, env: dict | None = None, **source):
    target = tmp_path / "target"
    target.mkdir(parents=True)
    plan = plan_for(artifact=sample.artifacts[FMT], path=uploaded[FMT], fmt=FMT,
                    source=server.source(prefix="team-a/", **source),
                    target={"type": "volume", "mountPath": str(target)})
    return run_runner(plan, tmp_path / "job", env={**NO_AMBIENT, **(env or {})}), target


def test_static_keys_from_the_secret_folder(s3, sample, uploaded, tmp_path):
    run, target = restore_from(s3, sample, uploaded, tmp_path)
    assert run.code == 0, run.output
    assert snapshot(target) == snapshot(sample.tree)


def test_the_default_chain_finds_keys_in_the_environment(s3, sample, uploaded, tmp_path):
    run, target = restore_from(s3, sample, uploaded, tmp_path, from_environment=True,
                               env={"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key})
    assert run.code == 0, run.output
    assert snapshot(target) == snapshot(sample.tree)
    assert s3.secret_key not in run.output


def test_without_any_credentials_the_fetch_fails_saying_so(s3, sample, uploaded, tmp_path):
    run, target = restore_from(s3, sample, uploaded, tmp_path, from_environment=True)
    assert run.report["reason"] == "FetchFailed", run.output
    assert "no S3 credentials were found in the pod's environment" in run.report["message"]
    assert snapshot(target) == {}


class CredentialsHandler(http.server.BaseHTTPRequestHandler):
    """A container credentials endpoint (what ECS and EKS Pod Identity serve to the pod)."""

    body = b""
    calls: list = []

    def do_GET(self):
        type(self).calls.append((self.path, self.headers.get("Authorization")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def test_the_credential_chain_calls_its_own_endpoints_outside_the_endpoint_guard(s3, sample, uploaded, tmp_path):
    """The guard pins the S3 requests to the endpoint's host and port; the chain's call to the
    container credentials endpoint (another port, as instance metadata is another address) still
    goes out, since it does not use the S3 requests' connections."""
    expiry = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    CredentialsHandler.body = json.dumps({"AccessKeyId": s3.access_key, "SecretAccessKey": s3.secret_key,
                                          "Token": "", "Expiration": expiry}).encode()
    CredentialsHandler.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CredentialsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "pod-identity-token"
    token.write_text("projected-token")
    try:
        run, target = restore_from(s3, sample, uploaded, tmp_path, from_environment=True, env={
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{server.server_port}/v1/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token)})
    finally:
        server.shutdown()
    assert run.code == 0, run.output
    assert snapshot(target) == snapshot(sample.tree)
    assert CredentialsHandler.calls == [("/v1/credentials", "projected-token")]


class StsHandler(http.server.BaseHTTPRequestHandler):
    """STS's AssumeRoleWithWebIdentity, as IRSA uses it: the projected token in, keys out."""

    keys: tuple = ("", "")
    forms: list = []

    def do_POST(self):
        from urllib.parse import parse_qs

        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        type(self).forms.append(form)
        expiry = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = (
            '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<AssumeRoleWithWebIdentityResult><Credentials>"
            f"<AccessKeyId>{self.keys[0]}</AccessKeyId><SecretAccessKey>{self.keys[1]}</SecretAccessKey>"
            f"<SessionToken></SessionToken><Expiration>{expiry}</Expiration>"
            "</Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_web_identity_as_irsa_provides_it(s3, sample, uploaded, tmp_path):
    """The variables and token file the EKS webhook gives a pod of an IRSA ServiceAccount; STS is
    a local stand-in (AWS_ENDPOINT_URL_STS) that hands out the S3 server's keys."""
    StsHandler.keys, StsHandler.forms = (s3.access_key, s3.secret_key), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token = tmp_path / "eks.amazonaws.com" / "token"
    token.parent.mkdir()
    token.write_text("projected-service-account-token")
    try:
        run, target = restore_from(s3, sample, uploaded, tmp_path, from_environment=True, env={
            "AWS_ROLE_ARN": "arn:aws:iam::111122223333:role/restore", "AWS_WEB_IDENTITY_TOKEN_FILE": str(token),
            "AWS_ENDPOINT_URL_STS": f"http://127.0.0.1:{server.server_port}", "AWS_REGION": "us-east-1"})
    finally:
        server.shutdown()
    assert run.code == 0, run.output
    assert snapshot(target) == snapshot(sample.tree)
    [form] = StsHandler.forms
    assert form["Action"] == ["AssumeRoleWithWebIdentity"]
    assert form["WebIdentityToken"] == ["projected-service-account-token"]
    assert form["RoleArn"] == ["arn:aws:iam::111122223333:role/restore"]


def test_https_with_a_private_ca_needs_the_ca_bundle(s3_tls, sample, uploaded, tmp_path):
    run, target = restore_from(s3_tls, sample, uploaded, tmp_path / "without")
    assert run.report["reason"] == "FetchFailed", run.output
    message = run.report["message"]
    assert "TLS verification of the S3 endpoint failed" in message and "certificate verify failed" in message, message
    assert "no caBundle is set" in message

    run, target = restore_from(s3_tls, sample, uploaded, tmp_path / "with", ca_file=s3_tls.ca_file)
    assert run.code == 0, run.output
    assert snapshot(target) == snapshot(sample.tree)


def test_a_ca_bundle_that_did_not_sign_the_certificate_is_refused(s3_tls, sample, uploaded, tmp_path):
    from storage import make_test_ca

    other_ca, _, _ = make_test_ca(tmp_path / "other-ca")
    run, _ = restore_from(s3_tls, sample, uploaded, tmp_path / "run", ca_file=other_ca)
    assert run.report["reason"] == "FetchFailed"
    assert "certificate verify failed" in run.report["message"] and "(caBundle is set)" in run.report["message"]


def test_the_guard_refuses_a_request_to_another_host():
    """A redirect elsewhere (another host, another port) never gets a connection."""
    guard = s3client.Guard((), lambda host, port, type=0: [(2, 1, 6, "", ("127.0.0.1", port))], None)
    assert guard.address("s3.example.test", 443) == "127.0.0.1"
    assert guard.address("s3.example.test", 443) == "127.0.0.1"
    for host, port in (("elsewhere.example.test", 443), ("s3.example.test", 8443)):
        with pytest.raises(RunnerFailure) as caught:
            guard.address(host, port)
        assert caught.value.reason == "EndpointNotAllowed"


def test_network_errors_are_retried_and_credential_errors_are_not():
    from botocore import exceptions as bx

    obj = s3client.S3Object(endpoint="https://s3.example.test", bucket="b", key="k", region="us-east-1",
                            force_path_style=True, credentials=None)
    dropped = obj._failure(bx.ConnectionClosedError(endpoint_url="https://s3.example.test/b/k"), 1 << 20)
    assert dropped.reason == "FetchFailed" and dropped.retryable and "at byte 1048576" in dropped.message
    none = obj._failure(bx.NoCredentialsError(), 0)
    assert not none.retryable and "no S3 credentials" in none.message
    sts = obj._failure(bx.ClientError({"Error": {"Code": "AccessDenied"},
                                       "ResponseMetadata": {"HTTPStatusCode": 403}}, "AssumeRoleWithWebIdentity"), 0)
    assert not getattr(sts, "retryable", False)
    assert "AssumeRoleWithWebIdentity: HTTP 403 AccessDenied" in sts.message


class CuttingRelay:
    """A TCP relay to the S3 server that closes its first connection after `cut` bytes of the
    answer: a connection dropped mid-body, on demand. It keeps every request's head."""

    def __init__(self, target_port: int, cut: int):
        import socket
        import socketserver

        relay = self
        self.cut, self.heads, self._connections = cut, [], 0
        self._lock = threading.Lock()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                with relay._lock:
                    relay._connections += 1
                    limit = relay.cut if relay._connections == 1 else None
                with socket.create_connection(("127.0.0.1", target_port)) as upstream:
                    head = self.request.recv(65536)
                    relay.heads.append(head.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                    upstream.sendall(head)
                    sent = 0
                    while data := upstream.recv(65536):
                        if limit is not None and sent + len(data) > limit:
                            self.request.sendall(data[:limit - sent])
                            self.request.shutdown(socket.SHUT_RDWR)
                            return
                        self.request.sendall(data)
                        sent += len(data)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def s3_object(s3, key: str, port: int | None = None) -> s3client.S3Object:
    """The runner's client for one object of the test server, or of a relay to it on `port`."""
    return s3client.S3Object(
        endpoint=f"http://127.0.0.1:{port}" if port else s3.endpoint, bucket=s3.bucket, key=key,
        region="us-east-1", force_path_style=True,
        credentials=s3client.Credentials(s3.access_key, s3.secret_key),
        ca_bundle=str(s3.ca_file) if s3.ca_file else None, sleep=lambda _: None)


@pytest.mark.parametrize("server", ["s3", "s3_tls"])
def test_the_body_is_read_by_the_stdlib_response_itself(server, request, sample, uploaded):
    """The one-copy read (body_readinto) is what a GetObject body gives, over HTTP and HTTPS: a
    urllib3 that stops wrapping http.client's response shows here, not as a slower restore."""
    import http.client

    obj = s3_object(request.getfixturevalue(server), "team-a/" + uploaded[FMT])
    body = obj._open(0)
    try:
        assert isinstance(s3client.body_readinto(body).__self__, http.client.HTTPResponse)
    finally:
        body.close()
    assert b"".join(obj.chunks()) == sample.artifacts[FMT].read_bytes()


def test_a_connection_dropped_mid_body_resumes_where_it_stopped(s3, sample, uploaded):
    data = sample.artifacts[FMT].read_bytes()
    relay = CuttingRelay(s3.port, cut=len(data) // 2)
    try:
        obj = s3_object(s3, "team-a/" + uploaded[FMT], relay.port)
        got = b"".join(obj.chunks(chunk_size=1 << 16))
    finally:
        relay.close()
    assert got == data
    assert len(relay.heads) == 2
    resumed = relay.heads[1].lower()
    assert "\r\nrange: bytes=" in resumed and "\r\nif-match: " in resumed


def test_a_resume_never_continues_an_object_replaced_meanwhile(s3, sample, tmp_path):
    """The first answer is cut; the object is replaced before the resume: the resume's If-Match
    makes the server refuse, and the fetch fails rather than splice two objects."""
    key = "team-a/runs/replaced.tar.zst"
    data = sample.artifacts[FMT].read_bytes()
    s3.upload_bytes(key, data)
    relay = CuttingRelay(s3.port, cut=len(data) // 2)
    obj = s3_object(s3, key, relay.port)
    got = bytearray()
    try:
        with pytest.raises(RunnerFailure) as caught:
            for chunk in obj.chunks(chunk_size=1 << 16):
                if not got:
                    s3.upload_bytes(key, data[::-1])
                got += chunk
    finally:
        relay.close()
    assert caught.value.reason == "FetchFailed"
    assert "412" in caught.value.message or "PreconditionFailed" in caught.value.message, caught.value.message
    assert len(got) < len(data)
