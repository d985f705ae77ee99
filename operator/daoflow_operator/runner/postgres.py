"""Execute for a PostgreSQL target: pg_restore of a verified `pg_dump -Fc` file.

Every restore runs in one transaction (`--single-transaction`, which implies exit on error),
so a failure anywhere, a damaged dump included, rolls the database back to how it was.
The password reaches libpq through PGPASSWORD in the child's environment, never argv, and
nothing the child prints leaves the runner without going through the redactor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass

from .failures import RunnerFailure, restore_failed

# Objects that count as data in a database; system schemas and temporary ones do not.
USER_OBJECTS_SQL = (
    "SELECT count(*) FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'"
)


@dataclass(frozen=True)
class Database:
    host: str
    port: str
    dbname: str
    user: str
    password: str
    sslmode: str = ""

    def __repr__(self) -> str:
        return f"Database(host={self.host!r}, port={self.port!r}, dbname={self.dbname!r}, user={self.user!r})"


def read_database_credentials(directory: str) -> Database:
    """The mounted Secret, one file per key; `database` and `username` are accepted aliases."""

    def read(*names: str, required: bool = True) -> str:
        for name in names:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    return f.read().strip()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise RunnerFailure("InvalidPlan", f"cannot read database key {name}: {exc.strerror}") from None
        if required:
            raise RunnerFailure("InvalidPlan", f"the database Secret has no key {names[0]}")
        return ""

    return Database(
        host=read("host"),
        port=read("port", required=False) or "5432",
        dbname=read("dbname", "database"),
        user=read("user", "username"),
        password=read("password", required=False),
        sslmode=read("sslmode", required=False),
    )


def conninfo(db: Database) -> str:
    """Pure: the non-secret part of the connection, as a libpq conninfo string."""

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return f"dbname={quote(db.dbname)}"


def libpq_env(db: Database, base: dict[str, str]) -> dict[str, str]:
    """Pure: the child's environment. Inherited PG* variables are dropped so none can redirect it."""
    env = {k: v for k, v in base.items() if not k.startswith("PG")}
    env.update(PGHOST=db.host, PGPORT=db.port, PGUSER=db.user, PGAPPNAME="daoflow-restore",
               PGCONNECT_TIMEOUT="30")
    if db.password:
        env["PGPASSWORD"] = db.password
    if db.sslmode:
        env["PGSSLMODE"] = db.sslmode
    return env


def restore_args(binary: str, db: Database, existing_data: str, dump_path: str) -> list[str]:
    """Pure: the pg_restore command line. It never holds the password.

    --no-owner and --no-privileges: the dump's roles need not exist where it is restored; the
    objects belong to the restoring user, as they would after a manual restore by that user.
    """
    args = [binary, "--dbname", conninfo(db), "--single-transaction", "--exit-on-error",
            "--no-owner", "--no-privileges"]
    if existing_data == "Replace":
        args += ["--clean", "--if-exists"]
    return args + [dump_path]


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise restore_failed(f"{name} is not installed in the runner image")
    return path


def _first_error(lines: list[str]) -> str:
    for line in lines:
        if "error" in line.lower():
            return line.strip()[:300]
    return (lines[-1].strip() if lines else "no output")[:300]


def count_user_objects(db: Database) -> int:
    """FailIfNotEmpty: how many tables, views, sequences... the target database holds."""
    proc = subprocess.run(
        [_binary("psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", USER_OBJECTS_SQL,
         "--dbname", conninfo(db)],
        env=libpq_env(db, dict(os.environ)), capture_output=True, text=True, timeout=120,
    )
    if proc.returncode != 0:
        raise restore_failed(
            f"cannot query the target database: {_first_error(proc.stderr.splitlines())}"
        )
    return int(proc.stdout.strip() or "0")


def toc_entries(dump_path: str) -> int:
    """The number of entries in the dump's table of contents (reported as `files`)."""
    proc = subprocess.run([_binary("pg_restore"), "--list", dump_path], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise RunnerFailure("CorruptArchive",
                            f"the dump cannot be read: {_first_error(proc.stderr.splitlines())}")
    return sum(1 for line in proc.stdout.splitlines() if line and not line.startswith(";"))


def run_pg_restore(db: Database, existing_data: str, dump_path: str, log) -> None:
    """Run pg_restore; its stderr goes through `log` (which redacts) line by line."""
    args = restore_args(_binary("pg_restore"), db, existing_data, dump_path)
    tail: deque[str] = deque(maxlen=50)
    proc = subprocess.Popen(args, env=libpq_env(db, dict(os.environ)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            errors="replace")
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            log(line.rstrip("\n"))
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: the server rolls the transaction back
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if code != 0:
        raise restore_failed(
            f"pg_restore failed and the transaction was rolled back: {_first_error(list(tail))}"
        )
