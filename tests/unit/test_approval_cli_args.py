"""The approval commands' arguments: the TTL's forms, and what a restore with --approval asks for."""

import argparse

import pytest

from daoflow_operator import cli


@pytest.mark.parametrize("text, seconds", [("7h", 25200), ("30m", 1800), ("90s", 90), ("1d", 86400), ("600", 600),
                                           ("1.5h", 5400)])
def test_a_ttl_is_a_duration(text, seconds):
    assert cli.parse_ttl(text) == seconds


def test_a_ttl_that_is_not_a_duration_is_a_usage_error():
    with pytest.raises(cli.CliError) as refused:
        cli.parse_ttl("soon")
    assert refused.value.code == cli.EXIT_USAGE


def test_a_restore_with_an_approval_names_it_and_the_exit_codes_are_distinct():
    args = cli.parser().parse_args(["backup", "restore", "--backup-run-id", "nightly", "--approval", "fix-1", "--yes"])
    assert cli.restore_spec(args).approval_ref.name == "fix-1"
    codes = [cli.EXIT_OK, cli.EXIT_RESTORE_FAILED, cli.EXIT_USAGE, cli.EXIT_NOT_FOUND, cli.EXIT_NO_CLUSTER,
             cli.EXIT_FORBIDDEN, cli.EXIT_API_ERROR, cli.EXIT_APPROVAL_REJECTED, cli.EXIT_APPROVAL_EXPIRED]
    assert len(set(codes)) == len(codes)
    request = cli.parser().parse_args(["approval", "request", "--backup-run-id", "nightly"])
    assert request.ttl == "7h" and isinstance(request, argparse.Namespace)
