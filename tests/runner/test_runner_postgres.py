"""Restoring `pg_dump -Fc` artifacts into a real PostgreSQL through the runner (item 6)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from runner_testlib import plan_for, run_runner

TABLES = ("customers", "orders", "blobs")
SCHEMA_AND_DATA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
INSERT INTO customers (name, email)
  SELECT 'customer ' || g || ' ünïcödé', 'c' || g || '@example.test' FROM generate_series(1, 5000) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id),
                     amount numeric(12,2), created timestamptz);
INSERT INTO orders (customer_id, amount, created)
  SELECT 1 + g % 5000, (g * 7 % 100000) / 100.0, timestamptz '2026-01-01' + g * interval '1 minute'
  FROM generate_series(1, 60000) g;
CREATE INDEX orders_created ON orders (created);
CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
INSERT INTO blobs SELECT g, decode(md5(g::text) || md5((g * 2)::text), 'hex') FROM generate_series(1, 3000) g;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 900;
"""


def fingerprint(pg, db: str) -> dict:
    """Row count and an md5 of every row, per table: equal fingerprints mean equal data."""
    out = {}
    for table in TABLES:
        exists = pg.psql(f"SELECT to_regclass('public.{table}') IS NOT NULL", db)
        if exists != "t":
            out[table] = None
            continue
        out[table] = pg.psql(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t.id)), '') "
            f"FROM {table} t", db)
    return out


@pytest.fixture(scope="session")
def pg_setup(postgres, tmp_path_factory):
    """A source database, its dump, and a login role for the runner with its own password."""
    role_password = "pg-Restorer-Secret-" + os.urandom(8).hex()
    postgres.psql(f"CREATE ROLE restorer LOGIN PASSWORD '{role_password}'")
    postgres.psql("CREATE DATABASE shop")
    postgres.psql(SCHEMA_AND_DATA, "shop")
    dumps = tmp_path_factory.mktemp("dumps")
    dump = postgres.pg_dump("shop", dumps / "shop.pgdump")
    return {"password": role_password, "dump": dump, "dir": dumps,
            "source": fingerprint(postgres, "shop")}


_counter = iter(range(1000))


def new_database(pg, with_data: bool = False) -> str:
    name = f"target_{next(_counter)}"
    pg.psql(f"CREATE DATABASE {name} OWNER restorer")
    if with_data:
        # Older data owned by the runner's role: a smaller, different version of the tables.
        pg.psql("SET ROLE restorer; CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);"
                "INSERT INTO customers (name) SELECT 'old ' || g FROM generate_series(1, 10) g;"
                "CREATE TABLE old_only (id int PRIMARY KEY); INSERT INTO old_only VALUES (1), (2);", name)
    return name


def database_secret(tmp_path: Path, pg, password: str, dbname: str) -> Path:
    d = tmp_path / "database-secret"
    d.mkdir()
    (d / "host").write_text("127.0.0.1")
    (d / "port").write_text(str(pg.port))
    (d / "database").write_text(dbname)  # the alias of dbname
    (d / "username").write_text("restorer")  # the alias of user
    (d / "password").write_text(password + "\n")
    return d


def pg_plan(tmp_path, pg, setup, dbname, artifact, existing=None, sha256=None, source=None):
    secret = database_secret(tmp_path, pg, setup["password"], dbname)
    return plan_for(
        artifact=artifact, path=artifact.name, fmt="postgres-custom", sha256=sha256,
        source=source or {"type": "volume", "mountPath": str(artifact.parent)},
        target={"type": "postgres", "credentialsDir": str(secret)}, existing=existing,
    )


def spy_pg_restore(tmp_path: Path) -> tuple[dict, Path]:
    """A pg_restore first on PATH that records its argv and whether PGPASSWORD is set, then
    runs the real one: proof that the password travels by environment, not argv."""
    real = shutil.which("pg_restore")
    bindir = tmp_path / "spy-bin"
    bindir.mkdir()
    log = tmp_path / "pg_restore.argv"
    spy = bindir / "pg_restore"
    spy.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$@\" >> '{log}'\n"
        f"[ -n \"$PGPASSWORD\" ] && echo PGPASSWORD-is-set >> '{log}'\n"
        f"exec '{real}' \"$@\"\n"
    )
    spy.chmod(spy.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bindir}:{os.environ['PATH']}"}, log


def test_restore_into_a_fresh_database_through_s3(postgres, pg_setup, s3, tmp_path):
    s3.upload("pg/shop.pgdump", pg_setup["dump"])
    db = new_database(postgres)
    env, argv_log = spy_pg_restore(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env["DAOFLOW_RUNNER_SCRATCH"] = str(scratch)
    plan = pg_plan(tmp_path, postgres, pg_setup, db, pg_setup["dump"], source=s3.source(prefix=""))
    plan["artifact"]["path"] = "pg/shop.pgdump"
    run = run_runner(plan, tmp_path / "job", env=env)
    assert run.code == 0, run.output
    assert run.report["verified"] is True
    assert run.report["files"] > 5  # the dump's table-of-contents entries
    assert fingerprint(postgres, db) == pg_setup["source"]
    assert postgres.psql("SELECT count(*) FROM big_orders", db) == postgres.psql(
        "SELECT count(*) FROM big_orders", "shop")
    argv = argv_log.read_text()
    assert "PGPASSWORD-is-set" in argv
    assert "--single-transaction" in argv
    assert pg_setup["password"] not in argv
    assert pg_setup["password"] not in run.output
    assert os.listdir(scratch) == []  # the spooled dump is gone


def test_fail_if_not_empty_refuses_a_database_with_tables(postgres, pg_setup, tmp_path):
    db = new_database(postgres, with_data=True)
    before = fingerprint(postgres, db)
    run = run_runner(pg_plan(tmp_path, postgres, pg_setup, db, pg_setup["dump"]), tmp_path / "job")
    assert run.code == 6, run.output
    assert run.report["reason"] == "TargetNotEmpty"
    assert fingerprint(postgres, db) == before


def test_replace_restores_over_existing_data(postgres, pg_setup, tmp_path):
    db = new_database(postgres, with_data=True)
    env, argv_log = spy_pg_restore(tmp_path)
    run = run_runner(pg_plan(tmp_path, postgres, pg_setup, db, pg_setup["dump"], existing="Replace"),
                     tmp_path / "job", env=env)
    assert run.code == 0, run.output
    assert fingerprint(postgres, db) == pg_setup["source"]
    argv = argv_log.read_text().split("\n")
    assert "--clean" in argv and "--if-exists" in argv


def test_corrupt_dump_leaves_the_database_as_it_was(postgres, pg_setup, tmp_path):
    """The dump is damaged in its data (the table of contents still reads), and the pinned
    checksum is the damaged file's own, so only pg_restore can notice: it fails midway, after
    --clean has dropped tables, and the single transaction puts everything back."""
    damaged = tmp_path / "dest" / "damaged.pgdump"
    damaged.parent.mkdir()
    data = pg_setup["dump"].read_bytes()
    damaged.write_bytes(data[: len(data) * 3 // 4])
    db = new_database(postgres, with_data=True)
    before = fingerprint(postgres, db)
    run = run_runner(pg_plan(tmp_path, postgres, pg_setup, db, damaged, existing="Replace"),
                     tmp_path / "job")
    assert run.code == 8, run.output
    assert run.report["reason"] == "RestoreFailed"
    assert "rolled back" in run.report["message"]
    assert run.report["verified"] is True
    assert fingerprint(postgres, db) == before
    assert postgres.psql("SELECT count(*) FROM old_only", db) == "2"


def test_tampered_dump_never_reaches_the_database(postgres, pg_setup, tmp_path):
    tampered = tmp_path / "dest" / "tampered.pgdump"
    tampered.parent.mkdir()
    data = bytearray(pg_setup["dump"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    db = new_database(postgres, with_data=True)
    before = fingerprint(postgres, db)
    import hashlib
    run = run_runner(pg_plan(tmp_path, postgres, pg_setup, db, tampered, existing="Replace",
                             sha256=hashlib.sha256(pg_setup["dump"].read_bytes()).hexdigest()),
                     tmp_path / "job")
    assert run.code == 4, run.output
    assert run.report["reason"] == "ChecksumMismatch"
    assert fingerprint(postgres, db) == before
