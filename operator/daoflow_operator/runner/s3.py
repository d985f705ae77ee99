"""GET one S3 object through botocore: its SigV4 signing and its whole credential chain (a
Secret's static keys, or the pod's environment: web identity/IRSA, Pod Identity and other
container credentials, instance metadata, ...), with the runner's own guard on where it connects.

The guard: the endpoint's name is resolved once and every address checked (`resolve`); the S3
requests then connect only to that address, and only for that host name, so a redirect to another
host is refused too. It is bound to this client's requests alone (`_PinnedSession`, through the
client's `before-send` event): the credential chain's own calls (STS, the container credentials
endpoint, instance metadata) keep botocore's plain sessions, so refusing metadata addresses as an
endpoint never breaks them.
Streaming reads fill 1 MiB buffers with readinto(); a dropped connection resumes with a Range
request, pinned to the first response's ETag.
"""

from __future__ import annotations

import gc
import http.client
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .failures import RunnerFailure, endpoint_not_allowed, fetch_failed

CHUNK = 1 << 20


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def __repr__(self) -> str:  # never print secrets, even in a traceback
        return "Credentials(***)"


def error_summary(status: int, code: str, headers: dict[str, str]) -> str:
    """Pure: a short description of an S3 error response (its Code, never its echo of input)."""
    text = f"HTTP {status}"
    if code and code != str(status):
        text += " " + code[:64]
    region = headers.get("x-amz-bucket-region")
    if region:
        text += f" (the bucket is in region {region[:64]})"
    return text


# Cloud metadata services, which hand out the node's credentials: never an S3 endpoint. Link-local
# addresses (169.254.0.0/16, fe80::/10, where most of them live) are refused as a whole.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
    "169.254.170.2",  # AWS ECS task credentials
    "fd00:ec2::254",  # AWS over IPv6
    "100.100.100.200",  # Alibaba Cloud
    "192.0.0.192",  # Oracle Cloud (classic)
))


def address_refusal(ip: str, allowlist: tuple[str, ...] = ()) -> str | None:
    """Pure: why the runner must not connect to this (resolved) address, or None.

    `allowlist`: CIDRs (an operator setting); when given, the address must lie in one of them.
    """
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        addr = mapped
    if addr in METADATA_ADDRESSES:
        return f"{addr} is a cloud metadata address"
    if addr.is_link_local:
        return f"{addr} is a link-local address"
    if allowlist and not any(addr in ipaddress.ip_network(net, strict=False) for net in allowlist):
        return f"{addr} is not in the allowed networks ({', '.join(allowlist)})"
    return None


def resolve(host: str, port: int, allowlist: tuple[str, ...] = (),
            getaddrinfo: Callable = socket.getaddrinfo) -> str:
    """The one address to connect to, resolved once and checked: every address the name resolves
    to must be allowed (a name that also resolves to a metadata address is refused), and the
    first is used for every connection. Raises RunnerFailure(EndpointNotAllowed)."""
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        failure = fetch_failed(f"the S3 endpoint {host} cannot be resolved: {exc.strerror or exc}")
        failure.retryable = True  # type: ignore[attr-defined]
        raise failure from None
    ips = list(dict.fromkeys(info[4][0] for info in infos))
    if not ips:
        raise fetch_failed(f"the S3 endpoint {host} resolves to no address")
    for ip in ips:
        problem = address_refusal(ip, allowlist)
        if problem is not None:
            raise endpoint_not_allowed(f"the S3 endpoint {host} resolves to {problem}; no request was sent")
    return ips[0]


class Guard:
    """Where the S3 requests may connect: the first host they address, at the address checked
    for it. Any other host (a redirect elsewhere) is refused."""

    def __init__(self, allowlist: tuple[str, ...], getaddrinfo: Callable, connect_host: str | None):
        self.allowlist = allowlist
        self.getaddrinfo = getaddrinfo
        # Tests reach a virtual-host-style name on loopback without DNS, like curl --resolve.
        self.connect_host = connect_host
        self.host: str | None = None
        self.port: int | None = None
        self.ip: str | None = None

    def address(self, host: str, port: int) -> str:
        if self.host is None:
            self.ip = resolve(self.connect_host or host, port, self.allowlist, self.getaddrinfo)
            self.host, self.port = host, port
        elif (host, port) != (self.host, self.port):
            raise endpoint_not_allowed(
                f"a request to {host}:{port} was refused: the runner connects only to the checked "
                f"endpoint {self.host}:{self.port}")
        assert self.ip is not None
        return self.ip


def _pinned_session(guard: Guard, verify: str | bool, timeout: float):
    """A botocore HTTP session whose connections go to the guard's checked address. The TLS
    name check and SNI still use the endpoint's name (urllib3 uses `host`, not the address)."""
    from botocore.awsrequest import (AWSHTTPConnection, AWSHTTPConnectionPool, AWSHTTPSConnection,
                                     AWSHTTPSConnectionPool)
    from botocore.httpsession import URLLib3Session
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    def new_conn(self) -> socket.socket:
        ip = guard.address(self.host, self.port)
        limit = self.timeout if isinstance(self.timeout, (int, float)) else None
        try:
            sock = socket.create_connection((ip, self.port), limit, self.source_address)
        except socket.timeout as exc:
            raise ConnectTimeoutError(self, f"connecting to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"failed to connect: {exc}") from exc
        for option in self.socket_options or ():
            sock.setsockopt(*option)
        return sock

    http_conn = type("PinnedHTTPConnection", (AWSHTTPConnection,), {"_new_conn": new_conn})
    https_conn = type("PinnedHTTPSConnection", (AWSHTTPSConnection,), {"_new_conn": new_conn})
    session = URLLib3Session(verify=verify, timeout=(timeout, timeout), max_pool_connections=1)
    # The pool classes by scheme are the session's one extension point for connections; the
    # same mapping serves its pool manager.
    session._pool_classes_by_scheme.update(
        http=type("PinnedHTTPPool", (AWSHTTPConnectionPool,), {"ConnectionCls": http_conn}),
        https=type("PinnedHTTPSPool", (AWSHTTPSConnectionPool,), {"ConnectionCls": https_conn}))
    return session


def _cause(exc: BaseException) -> BaseException | None:
    """The runner's own failure, or the TLS error, somewhere inside a botocore/urllib3 error."""
    seen = set()
    todo: list[object] = [exc]
    while todo:
        cur = todo.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, (RunnerFailure, ssl.SSLError)):
            return cur
        # botocore keeps the error it wraps in kwargs["error"], urllib3 in `reason` or args.
        todo += [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *getattr(cur, "args", ())]
        todo += list((getattr(cur, "kwargs", None) or {}).values())
    return None


def read_chunk(readinto: Callable[[memoryview], int], size: int) -> bytearray:
    """A fresh buffer filled with up to `size` bytes; empty at the end of the stream. It fills
    the whole chunk: a socket read returns far less, and every small chunk costs a queue
    hand-off and a decompressor call downstream."""
    buf = bytearray(size)
    with memoryview(buf) as view:
        n = 0
        while n < size:
            got = readinto(view[n:])
            if not got:
                break
            n += got
    if n < size:
        del buf[n:]
    return buf


def body_readinto(body) -> Callable[[memoryview], int]:
    """The readinto() to fill chunks from a GetObject body: the stdlib response's own, under
    botocore's StreamingBody and urllib3's response, when nothing has been read through them.

    urllib3 2's readinto() reads into a new bytes object and copies it, and http.client's
    read(n) copies once more: two copies of every byte that http.client's readinto() does not
    make (docs/runner.md, "S3 client"). botocore asks urllib3 for the body undecoded, so the
    bytes are the same; the length check is the caller's (S3Object.chunks). Anything else (a
    urllib3 that no longer wraps an http.client response) falls back to the body's readinto().
    """
    raw = getattr(body, "_raw_stream", None)
    fp = getattr(raw, "_fp", None)
    if (isinstance(fp, http.client.HTTPResponse) and getattr(raw, "decode_content", True) is False
            and getattr(raw, "_fp_bytes_read", None) == 0):
        return fp.readinto
    return body.readinto


class S3Object:
    """One object to GET, read as a stream of chunks, resumed on connection errors.

    `credentials`: static keys (from a Secret), or None for the default credential chain of the
    pod's environment. `ca_bundle`: a PEM file of CAs to trust instead of the public ones
    (without it, botocore's bundle of public CAs, or certifi's where installed, applies).
    """

    RETRIES = 5

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        key: str,
        region: str,
        force_path_style: bool,
        credentials: Credentials | None,
        ca_bundle: str | None = None,
        timeout: float = 60.0,
        connect_host: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        allowlist: tuple[str, ...] = (),
        getaddrinfo: Callable = socket.getaddrinfo,
    ):
        self.endpoint = endpoint
        self.bucket = bucket
        self.key = key
        self.url = f"s3://{bucket}/{key}"
        self.region = region
        self.force_path_style = force_path_style
        self.credentials = credentials
        self.ca_bundle = ca_bundle
        self.timeout = timeout
        self.sleep = sleep
        self.guard = Guard(allowlist, getaddrinfo, connect_host)
        self.length: int | None = None
        self._etag: str | None = None
        self._client = None

    def client(self):
        """The botocore client, made once. Its requests are sent by the pinned session."""
        if self._client is None:
            import botocore.session
            from botocore.config import Config

            session = botocore.session.Session()
            if self.credentials is not None:
                session.set_credentials(self.credentials.access_key_id, self.credentials.secret_access_key,
                                        self.credentials.session_token or None)
            config = Config(
                region_name=self.region, signature_version="s3v4",
                s3={"addressing_style": "path" if self.force_path_style else "virtual"},
                # One attempt per call: the resume loop below is the one retry policy.
                retries={"total_max_attempts": 1},
                connect_timeout=self.timeout, read_timeout=self.timeout,
                # The runner checks the pinned sha256 of every byte; a second checksum is work.
                response_checksum_validation="when_required",
                request_checksum_calculation="when_required",
            )
            client = session.create_client("s3", endpoint_url=self.endpoint, config=config,
                                           verify=self.ca_bundle or True)
            pinned = _pinned_session(self.guard, self.ca_bundle or True, self.timeout)
            client.meta.events.register("before-send.s3", lambda request, **_: pinned.send(request))
            self._client = client
            # botocore and its client are some 60,000 tracked objects that live as long as the
            # process: out of the collector's way, so that its full passes during the restore
            # do not walk them again and again.
            gc.freeze()
        return self._client

    def _failure(self, exc: Exception, offset: int) -> RunnerFailure:
        """A clear failure for a botocore error; `retryable` when a new attempt may succeed."""
        from botocore import exceptions as bx
        from urllib3.exceptions import HTTPError

        cause = _cause(exc)
        retryable = False
        if isinstance(cause, RunnerFailure):
            return cause
        if isinstance(exc, bx.ClientError):
            meta = exc.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            summary = error_summary(status, code, meta.get("HTTPHeaders") or {})
            if exc.operation_name != "GetObject":  # e.g. STS, for web identity credentials
                return fetch_failed(f"obtaining the S3 credentials from the pod's environment failed: "
                                    f"{exc.operation_name}: {summary}")
            failure = fetch_failed(f"GET {self.url} failed: {summary}")
            failure.retryable = status >= 500 or status == 429  # type: ignore[attr-defined]
            return failure
        if isinstance(cause, ssl.SSLError) or isinstance(exc, bx.SSLError):
            if isinstance(cause, ssl.SSLCertVerificationError):
                detail = f"certificate verify failed: {cause.verify_message}"
            else:
                detail = getattr(cause, "reason", None) or "the TLS handshake failed"
            hint = " (caBundle is set)" if self.ca_bundle else " (no caBundle is set: only public CAs are trusted)"
            message = f"GET {self.url}: TLS verification of the S3 endpoint failed: {detail}{hint}"
        elif isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
            message = ("no S3 credentials were found in the pod's environment (web identity, container "
                       "credentials, instance metadata, AWS_* variables)")
        elif isinstance(exc, bx.CredentialRetrievalError):
            provider = str(exc.kwargs.get("provider", "?"))[:64]
            message = f"the S3 credentials could not be obtained from the pod's environment ({provider} failed)"
        elif isinstance(exc, (bx.BotoCoreError, HTTPError, OSError, http.client.HTTPException)):
            retryable = True  # a dropped or refused connection, a timeout: resume
            message = f"GET {self.url} failed at byte {offset}: {type(exc).__name__}"
        else:
            raise exc  # a bug, not the network: reported as such by the fetch step
        failure = fetch_failed(message)
        failure.retryable = retryable  # type: ignore[attr-defined]
        return failure

    def _open(self, offset: int):
        args = {"Bucket": self.bucket, "Key": self.key}
        if offset:
            args["Range"] = f"bytes={offset}-"
            if self._etag:
                # A resumed read must continue the same object, not one replaced meanwhile.
                args["IfMatch"] = self._etag
        response = self.client().get_object(**args)
        body = response["Body"]
        if offset:
            if not str(response.get("ContentRange", "")).startswith(f"bytes {offset}-"):
                body.close()
                raise fetch_failed(f"GET {self.url}: the server did not resume at byte {offset}")
        else:
            self.length = response.get("ContentLength")
            self._etag = response.get("ETag")
        return body

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytearray]:
        """The object's bytes in order. Raises RunnerFailure(FetchFailed) when it gives up."""
        offset = 0
        failures = 0
        while True:
            body = None
            try:
                body = self._open(offset)
                readinto = body_readinto(body)
                while buf := read_chunk(readinto, chunk_size):
                    offset += len(buf)
                    failures = 0
                    yield buf  # a fresh buffer each time: the consumer may keep it
                if self.length is not None and offset < self.length:
                    raise ConnectionError(f"the body ended at byte {offset} of {self.length}")
                return
            except RunnerFailure as failure:
                if not getattr(failure, "retryable", False) or failures >= self.RETRIES:
                    raise
                failures += 1
            except Exception as exc:
                failure = self._failure(exc, offset)
                if not getattr(failure, "retryable", False):
                    raise failure from None
                failures += 1
                if failures > self.RETRIES:
                    raise fetch_failed(
                        f"GET {self.url} failed after {self.RETRIES} retries at byte {offset}: "
                        f"{type(exc).__name__}"
                    ) from None
            finally:
                if body is not None:
                    body.close()
            self.sleep(min(2 ** failures, 30))


def read_credentials(directory: str) -> Credentials:
    """The mounted Secret: one file per key. Raises FetchFailed naming a missing key."""

    def read(name: str, required: bool) -> str:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            if required:
                raise fetch_failed(f"the S3 credentials Secret has no key {name}") from None
            return ""
        except OSError as exc:
            raise fetch_failed(f"cannot read S3 credential {name}: {exc.strerror}") from None

    return Credentials(
        access_key_id=read("AWS_ACCESS_KEY_ID", True),
        secret_access_key=read("AWS_SECRET_ACCESS_KEY", True),
        session_token=read("AWS_SESSION_TOKEN", False),
    )
