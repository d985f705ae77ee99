"""The runner connects only to an S3 endpoint address it checked after DNS: never link-local, never
a cloud metadata address, and inside the allowlist when one is set. Nothing is sent otherwise."""

from __future__ import annotations

import socket

import pytest

from daoflow_operator.runner import s3
from daoflow_operator.runner.failures import RunnerFailure
from daoflow_operator.runner.plan import parse_source


def answers(*ips):
    calls = []

    def getaddrinfo(host, port, type=0):
        calls.append((host, port))
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in ips]
    getaddrinfo.calls = calls
    return getaddrinfo


@pytest.mark.parametrize("ip", ["169.254.169.254", "169.254.170.2", "169.254.1.1", "fe80::1", "fd00:ec2::254",
                                "100.100.100.200", "::ffff:169.254.169.254", "fe80::1%eth0"])
def test_link_local_and_metadata_addresses_are_refused(ip):
    assert s3.address_refusal(ip) is not None


@pytest.mark.parametrize("ip", ["10.88.0.1", "127.0.0.1", "52.95.110.1", "2600:1f18::1"])
def test_ordinary_addresses_are_allowed(ip):
    assert s3.address_refusal(ip) is None


def test_an_allowlist_bounds_the_addresses():
    assert s3.address_refusal("10.1.2.3", ("10.0.0.0/8",)) is None
    assert "not in the allowed networks" in s3.address_refusal("52.95.110.1", ("10.0.0.0/8", "fd00::/8"))
    assert s3.address_refusal("169.254.169.254", ("169.254.0.0/16",)) is not None  # never, allowlisted or not


def test_a_name_that_resolves_to_a_metadata_address_among_others_is_refused_once_resolved():
    lookup = answers("52.95.110.1", "169.254.169.254")
    with pytest.raises(RunnerFailure) as caught:
        s3.resolve("s3.example.com", 443, (), lookup)
    assert caught.value.reason == "EndpointNotAllowed"
    assert "169.254.169.254 is a cloud metadata address" in caught.value.message
    assert lookup.calls == [("s3.example.com", 443)]


def test_the_checked_address_is_the_one_connected_to_and_it_is_resolved_once(monkeypatch):
    lookup = answers("127.0.0.1")
    connected = []

    def create_connection(address, timeout=None, *args):
        connected.append(address)
        raise ConnectionRefusedError(111, "refused")
    monkeypatch.setattr(s3.socket, "create_connection", create_connection)
    obj = s3.S3Object(endpoint="http://s3.example.com:9000", bucket="backups", key="a", region="us-east-1",
                      force_path_style=True, credentials=s3.Credentials("AKID", "SECRET"), getaddrinfo=lookup,
                      sleep=lambda s: None)
    with pytest.raises(RunnerFailure):
        list(obj.chunks())
    assert lookup.calls == [("s3.example.com", 9000)]  # once, for every retry
    assert set(connected) == {("127.0.0.1", 9000)} and len(connected) == s3.S3Object.RETRIES + 1


@pytest.mark.parametrize("endpoint", ["http://169.254.169.254/latest/meta-data", "https://[fd00:ec2::254]"])
def test_a_metadata_endpoint_fails_before_any_request_with_the_credentials(monkeypatch, endpoint):
    monkeypatch.setattr(s3.socket, "create_connection", lambda *a, **k: pytest.fail("a connection was made"))
    obj = s3.S3Object(endpoint=endpoint, bucket="backups", key="a", region="us-east-1", force_path_style=True,
                      credentials=s3.Credentials("AKIDEXAMPLE", "secret", "token"), sleep=lambda s: None)
    with pytest.raises(RunnerFailure) as caught:
        list(obj.chunks())
    assert caught.value.reason == "EndpointNotAllowed"
    assert "no request was sent" in caught.value.message


def test_the_plan_carries_the_allowlist():
    source = parse_source({"type": "s3", "endpoint": "https://s3.local", "bucket": "backups",
                           "endpointAllowlist": ["10.0.0.0/8"]})
    assert source.endpoint_allowlist == ("10.0.0.0/8",)
    with pytest.raises(RunnerFailure):
        parse_source({"type": "s3", "endpoint": "https://s3.local", "bucket": "backups",
                      "endpointAllowlist": ["not a network"]})


def test_a_plain_http_endpoint_is_refused_unless_the_destination_allows_it():
    """A destination stored before the CRD's https rule still reaches the runner: it holds the line too."""
    plain = {"type": "s3", "endpoint": "http://s3.local", "bucket": "backups"}
    with pytest.raises(RunnerFailure) as refused:
        parse_source(plain)
    assert refused.value.reason == "EndpointNotAllowed" and "allowInsecureHTTP" in refused.value.message
    assert parse_source({**plain, "allowInsecureHTTP": True}).allow_insecure_http is True
    with pytest.raises(RunnerFailure):
        parse_source({**plain, "allowInsecureHTTP": "yes"})
