"""A throwaway PostgreSQL server for tests: the export's SQL on a strict database.

PostgreSQL is a test engine only (districts run Oracle): unlike SQLite it
types every column and rejects ungrouped columns, implicit text/number
comparisons and the like, so a query that passes here is not leaning on
SQLite's leniency.

Usage, from a test module (tests/ is on sys.path):

    pytest_plugins = ["pg"]  # the fixtures pg_cluster and pg_db

    def test_something(pg_db):
        connection = pg_db([Student(1001), Student(1002, fer=NO_ROW)])
        cursor = connection.cursor()
        ...

* `pg_cluster` (session fixture): one cluster for the whole run, from the
  binaries of Debian's `postgresql` package, in a temporary directory,
  listening only on a Unix socket in that directory.  Skips the test where
  the binaries (or psycopg) are absent.
* `pg_db` (fixture): `pg_db(students) -> psycopg.Connection`, a fresh
  database per call loaded like conftest.make_db, opened read-only (as the
  export's read user would be) in autocommit mode; closed and dropped after
  the test.
* `make_pg_db(cluster, students, name=None) -> str`: the same without a
  fixture; returns the new database's name (open it with cluster.connect).

A test module that imports from pg at its top imports it before pytest loads
it as a plugin, and pytest warns that it cannot rewrite its asserts; import
names from pg inside the tests, or (once conftest.py may change) list "pg" in
conftest.py's pytest_plugins and import it freely.

Run as root (CI is), initdb and pg_ctl run as an unprivileged user
(`postgres` if it exists, else `nobody`) through runuser or setpriv, since
PostgreSQL refuses to run as root; the temporary directory is owned by that
user.  The test process connects over the socket as the database superuser
`postgres` with trust authentication, whoever it runs as.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import NO_ROW

try:
    import pwd
except ImportError:  # Windows: running_cluster skips there before any use
    pwd = None
try:
    import psycopg
except ImportError:  # skipped below, so the rest of the suite still runs
    psycopg = None

START_TIMEOUT = 60.0  # seconds for initdb, and again for start-up
STOP_TIMEOUT = 30.0
SUPERUSER = "postgres"
PORT = 5432  # names the socket file only: nothing listens on TCP
UNPRIVILEGED_USERS = ("postgres", "nobody")

# PowerSchool's column types (NUMBER -> numeric, or integer for ids;
# VARCHAR2 -> varchar), with the keys of demo/powerschool_sample.sql.
SCHEMA = """
CREATE TABLE students (
    id             integer PRIMARY KEY,
    dcid           integer NOT NULL UNIQUE,
    student_number numeric,
    first_name     varchar(50),
    last_name      varchar(50),
    enroll_status  integer,
    fedethnicity   numeric
);
CREATE TABLE s_il_stu_demographics_x (studentsdcid integer, fer numeric);
CREATE TABLE s_il_stu_x (studentsdcid integer, lep numeric);
CREATE TABLE studentrace (studentid integer, racecd varchar(10));
CREATE TABLE u_def_ext_students0 (
    studentsdcid     integer,
    custom_ethnicity varchar(10),
    custom_race      varchar(10),
    custom_lep       varchar(10)
);
"""


class NotRepresentable(ValueError):
    """A test value that a strictly typed PostgreSQL column cannot hold."""


# --- Finding the server binaries ------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def find_pg_bin() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None.

    Debian keeps them in /usr/lib/postgresql/VERSION/bin, off PATH; the
    newest version wins.  Elsewhere, PATH.
    """
    needed = ("initdb", "pg_ctl", "postgres")
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(os.path.join(directory, name), os.X_OK) for name in needed):
            return Path(directory)
    found = [shutil.which(name) for name in needed]
    if all(found) and len({os.path.dirname(path) for path in found}) == 1:
        return Path(found[0]).parent
    return None


# --- Running as an unprivileged user when root ---------------------------------


def _unprivileged_user() -> pwd.struct_passwd | None:
    for name in UNPRIVILEGED_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    return None


def _as_user_prefix(user: pwd.struct_passwd | None) -> list[str]:
    """The command prefix that drops root to `user`; [] when not root."""
    if user is None:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
    raise RuntimeError("running as root, and neither runuser nor setpriv is installed to drop privileges")


class PgCluster:
    """One PostgreSQL cluster in a temporary directory, on a Unix socket there.

    Attributes: bin (Path), directory (Path: socket and data/ and server.log),
    data, log, port, user (the OS account the server runs as, or None for
    the current one), startup_seconds (initdb + start, wall clock).
    """

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.user = _unprivileged_user() if os.geteuid() == 0 else None
        if os.geteuid() == 0 and self.user is None:
            raise RuntimeError(f"running as root and no unprivileged user ({', '.join(UNPRIVILEGED_USERS)})")
        self.prefix = _as_user_prefix(self.user)
        self.directory = self._make_directory()
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = PORT
        self.startup_seconds: float | None = None
        self._databases = itertools.count(1)

    # The socket path (directory + "/.s.PGSQL.5432") must stay under ~107
    # bytes, and the server's user must reach the directory: a short
    # directory straight under the temp root, which is world-searchable.
    def _make_directory(self) -> Path:
        candidates = [tempfile.gettempdir(), "/tmp"] if self.user else [tempfile.gettempdir()]
        for base in dict.fromkeys(candidates):
            directory = Path(tempfile.mkdtemp(prefix="pg-", dir=base))
            if self.user is None:
                return directory
            os.chown(directory, self.user.pw_uid, self.user.pw_gid)
            reachable = subprocess.run(
                [*self.prefix, "test", "-w", str(directory)], cwd="/", timeout=30, check=False
            )
            if reachable.returncode == 0:
                return directory
            shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"user {self.user.pw_name} cannot write to a temporary directory in {candidates}")

    def _run(self, *command: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(
                [*self.prefix, *command],
                cwd=self.directory,  # the server's user may not reach ours
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{Path(command[0]).name} did not finish within {timeout:g} s{self._log_tail()}"
            ) from None
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return "\nserver.log:\n" + self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> PgCluster:
        started = time.monotonic()
        self._run(
            str(self.bin / "initdb"),
            "-D", str(self.data),
            "-U", SUPERUSER,
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",  # throwaway: nothing needs to survive a crash
            timeout=START_TIMEOUT,
        )  # fmt: skip
        # Appended as root, the file keeps its owner.
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                "\n# tests/pg.py: a throwaway cluster on a private Unix socket\n"
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.directory}'\n"
                f"port = {self.port}\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 50\n"
            )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-w", "-t", str(int(START_TIMEOUT)), "start",
            timeout=START_TIMEOUT + 10,
        )  # fmt: skip
        self._wait_until_connectable(time.monotonic() + START_TIMEOUT)
        self.startup_seconds = time.monotonic() - started
        return self

    def _wait_until_connectable(self, deadline: float) -> None:
        while True:
            try:
                self.connect(connect_timeout=5).close()
                return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"PostgreSQL did not accept connections: {error}{self._log_tail()}"
                    ) from None
            time.sleep(0.05)

    def stop(self) -> None:
        """Fast shutdown, then SIGKILL if that fails; removes the directory."""
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._run(
                        str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                        "-w", "-t", str(int(STOP_TIMEOUT)), "stop",
                        timeout=STOP_TIMEOUT + 10,
                    )  # fmt: skip
                except (RuntimeError, OSError):
                    self._kill()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _kill(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)

    # --- Connections and databases -------------------------------------------

    def conninfo(self, dbname: str = "postgres") -> dict[str, Any]:
        """Keyword arguments for psycopg.connect (host is the socket directory)."""
        return {"host": str(self.directory), "port": self.port, "user": SUPERUSER, "dbname": dbname}

    def connect(self, dbname: str = "postgres", **kwargs: Any):
        """A psycopg connection to `dbname` as the superuser; kwargs go to psycopg.connect."""
        return psycopg.connect(**{"connect_timeout": 10, **self.conninfo(dbname), **kwargs})

    def create_database(self, name: str | None = None) -> str:
        name = name or f"powerschool_{next(self._databases)}"
        with self.connect(autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect(autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_cluster() -> Iterator[PgCluster]:
    """A started cluster, stopped and removed on exit; pytest.skip where absent."""
    if psycopg is None:
        pytest.skip("psycopg is not installed (pip install -r requirements-test.txt)")
    if sys.platform == "win32":
        pytest.skip("needs a Linux PostgreSQL server (initdb, pg_ctl, runuser/setpriv, Unix socket)")
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries are not installed (.ci/run installs postgresql)")
    cluster = PgCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One PostgreSQL cluster for the whole test session."""
    with running_cluster() as cluster:
        yield cluster


# --- PowerSchool-shaped databases -------------------------------------------------


def _rows(students: Sequence[Any]) -> Iterator[tuple[str, tuple, int]]:
    """(table, row, student position) for each row conftest.make_db inserts."""
    for position, student in enumerate(students, 1):
        dcid, student_id = 10_000 + position, 20_000 + position
        yield (
            "students",
            (student_id, dcid, student.number, student.first, student.last,
             student.enroll, student.fedethnicity),
            position,
        )  # fmt: skip
        for table, column_value in (("s_il_stu_demographics_x", student.fer), ("s_il_stu_x", student.lep)):
            if column_value is NO_ROW:
                continue
            for value in column_value if isinstance(column_value, list) else [column_value]:
                yield table, (dcid, value), position
        for race in student.races:
            yield "studentrace", (student_id, race), position
        if student.current is not None:
            yield "u_def_ext_students0", (dcid, *student.current), position


def _stored(value: Any) -> Any:
    # sqlite3 stores a bool as 1 or 0; so does this (PostgreSQL would refuse
    # a boolean in a numeric column).  Everything else goes as it is: text
    # is sent untyped, so PostgreSQL's own input rules apply ('16' and ' 16 '
    # become 16 in a numeric column; 'abc' is refused).
    return int(value) if isinstance(value, bool) else value


def make_pg_db(cluster: PgCluster, students: Sequence[Any], name: str | None = None) -> str:
    """A new database in `cluster` with the rows conftest.make_db would insert.

    Same ids (dcid 10_000 + position, id 20_000 + position), NO_ROW for no
    extension row, a list for several rows, races, current values.  Returns
    the database's name.  A value its column cannot hold raises
    NotRepresentable (naming student, table and value) and leaves no database.
    """
    rows = [
        (table, tuple(_stored(value) for value in row), position) for table, row, position in _rows(students)
    ]
    name = cluster.create_database(name)
    try:
        with cluster.connect(name) as connection:
            connection.execute(SCHEMA)
            connection.commit()
            tables: dict[str, list[tuple]] = {}
            for table, row, _ in rows:
                tables.setdefault(table, []).append(row)
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    for table, table_rows in tables.items():
                        marks = ", ".join(["%s"] * len(table_rows[0]))
                        cursor.executemany(f"INSERT INTO {table} VALUES ({marks})", table_rows)
            except (psycopg.DataError, psycopg.ProgrammingError, psycopg.IntegrityError) as error:
                raise _culprit(connection, rows, error) from error
    except BaseException:
        cluster.drop_database(name)
        raise
    return name


def _culprit(connection, rows: list[tuple[str, tuple, int]], error: Exception) -> NotRepresentable:
    """Row by row, which row the batch insert failed on."""
    try:
        with connection.transaction(), connection.cursor() as cursor:
            for table, row, position in rows:
                try:
                    with connection.transaction():
                        cursor.execute(f"INSERT INTO {table} VALUES ({', '.join(['%s'] * len(row))})", row)
                except psycopg.Error as row_error:
                    message = str(row_error).strip().splitlines()[0]
                    return NotRepresentable(
                        f"student #{position}: PostgreSQL cannot store {row!r} in {table}: {message}"
                    )
            raise psycopg.Rollback()
    except psycopg.Error:
        pass
    return NotRepresentable(f"PostgreSQL refused the rows: {error}")


@pytest.fixture
def pg_db(pg_cluster: PgCluster) -> Iterator[Any]:
    """pg_db(students) -> a read-only autocommit psycopg connection to a fresh database."""
    opened: list[tuple[Any, str]] = []

    def load(students: Sequence[Any]):
        name = make_pg_db(pg_cluster, students)
        connection = pg_cluster.connect(name, autocommit=True, options="-c default_transaction_read_only=on")
        opened.append((connection, name))
        return connection

    yield load
    for connection, name in opened:
        connection.close()
        pg_cluster.drop_database(name)
