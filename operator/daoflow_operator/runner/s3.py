"""A small streaming S3 GET client: AWS Signature Version 4 on the standard library.

Only what a restore needs: GET one object, path-style or virtual-host style, any region, with
an optional session token, resuming with a Range request when the connection drops.
Signing (`sign_request`) is a pure function; `S3Object.chunks` is the I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from .failures import RunnerFailure, endpoint_not_allowed, fetch_failed

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""

    def __repr__(self) -> str:  # never print secrets, even in a traceback
        return "Credentials(***)"


@dataclass(frozen=True)
class Address:
    """Where to connect and what to sign: the result of the addressing style."""

    scheme: str
    host: str  # host name to connect to
    port: int
    host_header: str  # the Host header, as signed
    path: str  # the URI-encoded path, as signed and sent


def uri_encode_path(path: str) -> str:
    # S3 encodes each byte except the unreserved characters and '/', and does not double-encode.
    return quote(path.encode("utf-8", "surrogateescape"), safe="/~")


def address(endpoint: str, bucket: str, key: str, force_path_style: bool) -> Address:
    """Pure: the address of an object under both addressing styles."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname or ""
    base = parts.path.rstrip("/")
    default_port = (scheme, port) in (("http", 80), ("https", 443))
    bracketed = f"[{host}]" if ":" in host else host
    if force_path_style:
        path = f"{base}/{bucket}/{key}"
    else:
        host = f"{bucket}.{host}"
        bracketed = f"{bucket}.{bracketed}"
        path = f"{base}/{key}"
    host_header = bracketed if default_port else f"{bracketed}:{port}"
    return Address(scheme=scheme, host=host, port=port, host_header=host_header,
                   path=uri_encode_path(path))


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    k = _hmac(("AWS4" + secret).encode("utf-8"), date)
    k = _hmac(k, region)
    k = _hmac(k, service)
    return _hmac(k, "aws4_request")


def sign_request(
    *,
    method: str,
    addr: Address,
    headers: dict[str, str],
    region: str,
    credentials: Credentials,
    now: dt.datetime,
    payload_sha256: str = EMPTY_SHA256,
) -> dict[str, str]:
    """Pure: the request headers with x-amz-date, x-amz-content-sha256 and Authorization.

    Every header passed in is signed. There is no query string: a GET of an object needs none.
    """
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    out = {k.lower(): " ".join(v.strip().split()) for k, v in headers.items()}
    out["host"] = addr.host_header
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_sha256
    if credentials.session_token:
        out["x-amz-security-token"] = credentials.session_token
    names = sorted(out)
    canonical_headers = "".join(f"{n}:{out[n]}\n" for n in names)
    signed = ";".join(names)
    canonical = "\n".join([method, addr.path, "", canonical_headers, signed, payload_sha256])
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(canonical.encode("utf-8")).hexdigest()]
    )
    signature = hmac.new(
        signing_key(credentials.secret_access_key, date, region), to_sign.encode("utf-8"),
        hashlib.sha256,
    ).hexdigest()
    out["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return out


def error_summary(status: int, body: bytes, headers: dict[str, str]) -> str:
    """Pure: a short description of an S3 error response (its Code, never its echo of input)."""
    code = re.search(rb"<Code>([^<]{1,64})</Code>", body)
    text = f"HTTP {status}"
    if code:
        text += " " + code.group(1).decode("ascii", "replace")
    region = headers.get("x-amz-bucket-region")
    if region:
        text += f" (the bucket is in region {region})"
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


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, not to a name resolved again."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above, with TLS verified against the endpoint's name (SNI and certificate)."""

    def __init__(self, host: str, port: int, ip: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class S3Object:
    """One object to GET, read as a stream of chunks, resumed on connection errors."""

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
        timeout: float = 60.0,
        connect_host: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        allowlist: tuple[str, ...] = (),
        getaddrinfo: Callable = socket.getaddrinfo,
    ):
        self.addr = address(endpoint, bucket, key, force_path_style)
        self.url = f"s3://{bucket}/{key}"
        self.region = region
        self.credentials = credentials
        self.timeout = timeout
        # Tests reach a virtual-host-style name on loopback without DNS, like curl --resolve.
        self.connect_host = connect_host or self.addr.host
        self.sleep = sleep
        self.allowlist = allowlist
        self.getaddrinfo = getaddrinfo
        self._ip: str | None = None  # resolved and checked once, then used for every connection
        self.length: int | None = None
        self._etag: str | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._ip is None:
            self._ip = resolve(self.connect_host, self.addr.port, self.allowlist, self.getaddrinfo)
        if self.addr.scheme == "https":
            return _PinnedHTTPSConnection(self.addr.host, self.addr.port, self._ip, self.timeout,
                                          ssl.create_default_context())
        return _PinnedHTTPConnection(self.connect_host, self.addr.port, self._ip, self.timeout)

    def _open(self, offset: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        headers: dict[str, str] = {}
        if offset:
            headers["range"] = f"bytes={offset}-"
            if self._etag:
                # A resumed read must continue the same object, not one replaced meanwhile.
                headers["if-match"] = self._etag
        if self.credentials is not None:
            headers = sign_request(
                method="GET", addr=self.addr, headers=headers, region=self.region,
                credentials=self.credentials, now=dt.datetime.now(dt.timezone.utc),
            )
        else:
            headers["host"] = self.addr.host_header
        conn = self._connection()
        conn.putrequest("GET", self.addr.path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        expected = 206 if offset else 200
        if resp.status != expected:
            body = resp.read(65536)
            conn.close()
            summary = error_summary(resp.status, body, {k.lower(): v for k, v in resp.getheaders()})
            failure = fetch_failed(f"GET {self.url} failed: {summary}")
            failure.retryable = resp.status >= 500 or resp.status == 429  # type: ignore[attr-defined]
            raise failure
        if offset:
            start = re.match(r"bytes (\d+)-", resp.getheader("content-range", ""))
            if not start or int(start.group(1)) != offset:
                conn.close()
                raise fetch_failed(f"GET {self.url}: the server did not resume at byte {offset}")
        else:
            length = resp.getheader("content-length")
            self.length = int(length) if length and length.isdigit() else None
            self._etag = resp.getheader("etag")
        return conn, resp

    def chunks(self, chunk_size: int = CHUNK) -> Iterator[bytearray]:
        """The object's bytes in order. Raises RunnerFailure(FetchFailed) when it gives up."""
        offset = 0
        failures = 0
        while True:
            conn = None
            try:
                conn, resp = self._open(offset)
                while True:
                    # Fill the whole chunk: a socket read returns far less, and every small
                    # chunk costs a queue hand-off and a decompressor call downstream.
                    buf = bytearray(chunk_size)
                    view, n = memoryview(buf), 0
                    while n < chunk_size:
                        got = resp.readinto(view[n:])
                        if not got:
                            break
                        n += got
                    view.release()
                    if not n:
                        break
                    offset += n
                    failures = 0
                    if n < chunk_size:
                        del buf[n:]
                    yield buf  # a fresh buffer each time: the consumer may keep it
                if self.length is not None and offset < self.length:
                    raise http.client.IncompleteRead(b"", self.length - offset)
                return
            except RunnerFailure as failure:
                if not getattr(failure, "retryable", False) or failures >= self.RETRIES:
                    raise
                failures += 1
            except (OSError, http.client.HTTPException) as exc:
                failures += 1
                if failures > self.RETRIES:
                    raise fetch_failed(
                        f"GET {self.url} failed after {self.RETRIES} retries at byte {offset}: "
                        f"{type(exc).__name__}"
                    ) from None
            finally:
                if conn is not None:
                    conn.close()
            self.sleep(min(2 ** failures, 30))


def read_credentials(directory: str) -> Credentials:
    """The mounted Secret: one file per key. Raises FetchFailed naming a missing key."""
    import os

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
