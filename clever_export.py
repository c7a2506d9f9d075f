#!/usr/bin/env python3
"""clever_export.py - nightly PowerSchool -> Clever race, ethnicity and ELL export.

Every night this script reads all active students (ENROLL_STATUS = 0) from
PowerSchool's Oracle database with ONE query, maps the Illinois state codes to
the values Clever accepts, writes a tab-delimited UTF-8 file with LF line
endings, and places it on the district's SFTP server, where a PowerSchool
AutoComm job imports it into the custom fields Clever syncs.

    student_number <TAB> Hispanic_Latino <TAB> Race <TAB> ELL <LF>

  Race             from S_IL_STU_DEMOGRAPHICS_X.FER: 12 I, 13 A, 14 B, 15 P,
                   16 W, 17 M; 11 (Hispanic), NULL or unknown -> blank.
                   Hispanic students take their race from STUDENTRACE when
                   the district supplies its RACECD map (--config).
  Hispanic_Latino  from STUDENTS.FEDETHNICITY: 1 Y, 0 N; -1/NULL -> blank.
  ELL              from S_IL_STU_X.LEP: 1 Y; 0, NULL or no row -> N.

Blank means "not known" to Clever: an unanswered question is never sent as N.

Guarantees
  * Passwords and key passphrases never reach stdout, stderr or the log.
  * The SFTP server's host key must be in the known_hosts file beside the
    script (or --known-hosts).  There is no switch to skip this check.
  * The importer never sees half a file: the local file is written to a
    temporary name and renamed; the upload goes to a temporary name in the
    remote directory and is renamed over the final name, then its size is
    checked.
  * A failure exits non-zero with one line on stderr naming the problem and
    the fix, and nothing is uploaded after a failure.
  * One run at a time (an OS lock beside the script); a collapsed export
    (zero students, or a large drop since the last upload) is not uploaded.

Exit codes
   0  success                       4  SFTP: connect, login, host key, upload
   1  unexpected error (see log)    5  safety guard: export looks wrong
   2  usage or configuration        75 another run holds the lock
   3  database: connect or query

Files beside the script (not the working directory, because Task Scheduler
starts jobs in System32): known_hosts, raceethnicity.txt, clever_export.log
(rotated), clever_export.state.json (last upload's count), clever_export.lock.

Sections below follow the data: settings, source, mapping, file, upload,
run, command line.  Run with --help for the options, and see README.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import decimal
import json
import logging
import logging.handlers
import operator
import os
import posixpath
import re
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

__version__ = "1.0.0"

SCRIPT_DIR = Path(__file__).resolve().parent
LOG = logging.getLogger("clever_export")

# =============================================================================
# Settings
# =============================================================================

DEFAULT_KNOWN_HOSTS = SCRIPT_DIR / "known_hosts"
DEFAULT_LOG_FILE = SCRIPT_DIR / "clever_export.log"
DEFAULT_STATE_FILE = SCRIPT_DIR / "clever_export.state.json"
DEFAULT_LOCK_FILE = SCRIPT_DIR / "clever_export.lock"
DEMO_SEED_FILE = SCRIPT_DIR / "demo" / "powerschool_sample.sql"
DEMO_OUTPUT_NAME = "demo-raceethnicity.txt"

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_RETRIES = 3
DEFAULT_RETRY_WAIT_SECONDS = 10.0
DEFAULT_MAX_DROP_PERCENT = 20.0
LOG_MAX_BYTES = 5 * 1024 * 1024  # x LOG_BACKUPS: the log never exceeds ~30 MB
LOG_BACKUPS = 5

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_DATABASE = 3
EXIT_SFTP = 4
EXIT_GUARD = 5
EXIT_LOCKED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"

# Clever's accepted values (blank = unknown).
CLEVER_RACE_LETTERS = frozenset({"A", "B", "I", "M", "P", "W", ""})
OUTPUT_COLUMNS = ("student_number", "Hispanic_Latino", "Race", "ELL")


class ExportError(Exception):
    """An expected failure: its message is the one line an admin reads."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(ExportError):
    exit_code = EXIT_CONFIG


class DatabaseError(ExportError):
    exit_code = EXIT_DATABASE


class SftpError(ExportError):
    exit_code = EXIT_SFTP


class TransientSftpError(SftpError):
    """A network failure worth another attempt (refused, reset, timed out)."""


class GuardError(ExportError):
    exit_code = EXIT_GUARD


class LockedError(ExportError):
    exit_code = EXIT_LOCKED


class Secret:
    """A password that cannot be printed by accident: str() and repr() hide it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


# --- The profile: everything state- or district-specific --------------------

ILLINOIS_QUERY = """\
SELECT s.id, s.dcid, s.student_number, s.first_name, s.last_name, s.fedethnicity,
       d.fer state_race, x.lep
FROM students s
LEFT JOIN (SELECT studentsdcid, MAX(fer) fer
           FROM s_il_stu_demographics_x GROUP BY studentsdcid) d
       ON d.studentsdcid = s.dcid
LEFT JOIN (SELECT studentsdcid, MAX(lep) lep
           FROM s_il_stu_x GROUP BY studentsdcid) x
       ON x.studentsdcid = s.dcid
WHERE s.enroll_status = 0
ORDER BY s.student_number"""
# Extension tables are one row per student by design; grouping them anyway
# means a stray second row can neither duplicate nor drop a student.

# STUDENTRACE is PowerSchool core, the same in every state, so the script adds
# this join itself, and only when the profile uses it: one row per race the
# family chose becomes the lowest code and the number of distinct codes.
STUDENTRACE_JOIN = """\
LEFT JOIN (SELECT studentid, MIN(racecd) race_code, COUNT(DISTINCT racecd) race_count
           FROM studentrace GROUP BY studentid) r
       ON r.studentid = q.id"""

# The query's columns, by name in any order: always dcid, student_number,
# first_name and last_name; then what each output field is made from.
VALUE_FIELDS = ("Hispanic_Latino", "Race", "ELL")
CURRENT_COLUMN_OF = {"Hispanic_Latino": "current_hispanic", "Race": "current_race", "ELL": "current_ell"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """What a state or district changes: query, code maps, names, file shape."""

    name: str = "Illinois (ISBE FER, S_IL_STU_X LEP)"
    query: str = ILLINOIS_QUERY
    tables: tuple[str, ...] = ("students", "s_il_stu_demographics_x", "s_il_stu_x")
    exclude_names: tuple[str, ...] = ("TEST",)
    # race.source "state": state_race through state_codes; a student whose
    # state code is in state_codes_without_race (Illinois FER 11 = Hispanic)
    # takes race from STUDENTRACE when studentrace_codes is not empty.
    # race.source "studentrace": race from STUDENTRACE alone.
    race_source: str = "state"
    state_codes: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"12": "I", "13": "A", "14": "B", "15": "P", "16": "W", "17": "M"}
    )
    state_codes_without_race: tuple[str, ...] = ("11",)
    studentrace_codes: dict[str, str] = dataclasses.field(default_factory=dict)
    hispanic_yes: tuple[str, ...] = ("1",)
    hispanic_no: tuple[str, ...] = ("0",)
    ell_yes: tuple[str, ...] = ("1",)
    file_name: str = "raceethnicity.txt"
    remote_dir: str = "/sftp/clever/"
    columns: tuple[str, ...] = OUTPUT_COLUMNS
    header: bool = False
    # Where the import writes, for --changed-only and --dry-run comparisons.
    current_table: str = "u_def_ext_students0"
    current_key: str = "studentsdcid"
    current_hispanic: str = "custom_ethnicity"
    current_race: str = "custom_race"
    current_ell: str = "custom_lep"

    def value_fields(self) -> tuple[str, ...]:
        """The output columns other than student_number, in file order."""
        return tuple(column for column in self.columns if column != "student_number")

    def uses_studentrace(self) -> bool:
        return "Race" in self.columns and (self.race_source == "studentrace" or bool(self.studentrace_codes))

    def required_columns(self) -> tuple[str, ...]:
        """What the profile's query must return for the fields it writes."""
        columns = ["dcid", "student_number", "first_name", "last_name"]
        fields = self.value_fields()
        if "Hispanic_Latino" in fields:
            columns.append("fedethnicity")
        if "ELL" in fields:
            columns.append("lep")
        if "Race" in fields and self.race_source == "state":
            columns.append("state_race")
        if self.uses_studentrace():
            columns.append("id")  # STUDENTS.ID, for the STUDENTRACE join
        return tuple(columns)

    def tables_read(self) -> tuple[str, ...]:
        """Every table a nightly run reads (what --check proves readable)."""
        return self.tables + (("studentrace",) if self.uses_studentrace() else ())

    def current_columns(self) -> dict[str, str]:
        """Query column -> custom field holding PowerSchool's current value."""
        source = {
            "Hispanic_Latino": self.current_hispanic,
            "Race": self.current_race,
            "ELL": self.current_ell,
        }
        return {CURRENT_COLUMN_OF[field]: source[field] for field in self.value_fields()}

    def can_compare(self) -> bool:
        return bool(self.current_table)


# TOML layout: [section] key -> Profile field, with the type it must have.
_PROFILE_KEYS: dict[str, dict[str, tuple[str, type]]] = {
    "profile": {"name": ("name", str)},
    "students": {
        "query": ("query", str),
        "tables": ("tables", list),
        "exclude_names": ("exclude_names", list),
    },
    "race": {
        "source": ("race_source", str),
        "state_codes": ("state_codes", dict),
        "state_codes_without_race": ("state_codes_without_race", list),
        "studentrace_codes": ("studentrace_codes", dict),
    },
    "hispanic": {"yes": ("hispanic_yes", list), "no": ("hispanic_no", list)},
    "ell": {"yes": ("ell_yes", list)},
    "output": {
        "file_name": ("file_name", str),
        "remote_dir": ("remote_dir", str),
        "columns": ("columns", list),
        "header": ("header", bool),
    },
    "current_values": {
        "table": ("current_table", str),
        "key": ("current_key", str),
        "hispanic": ("current_hispanic", str),
        "race": ("current_race", str),
        "ell": ("current_ell", str),
    },
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$#]*\Z")


def load_profile(config_path: Path | None) -> Profile:
    """The built-in Illinois profile, overridden by a TOML file if given."""
    if config_path is None:
        return Profile()
    try:
        with open(config_path, "rb") as config_file:
            document = tomllib.load(config_file)
    except OSError as error:
        raise ConfigError(
            f"cannot read config file {config_path}: {error.strerror}; check --config"
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {config_path} is not valid TOML: {error}") from None
    return profile_from_mapping(document, str(config_path))


def profile_from_mapping(document: dict[str, Any], source: str = "config") -> Profile:
    """Validate a parsed TOML document and return the profile it describes."""
    changes: dict[str, Any] = {}
    for section, values in document.items():
        if section not in _PROFILE_KEYS:
            raise ConfigError(
                f"{source}: unknown section [{section}]; valid sections: {', '.join(sorted(_PROFILE_KEYS))}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of keys")
        for key, value in values.items():
            if key not in _PROFILE_KEYS[section]:
                raise ConfigError(
                    f"{source}: unknown key {section}.{key}; "
                    f"valid keys: {', '.join(sorted(_PROFILE_KEYS[section]))}"
                )
            field, expected = _PROFILE_KEYS[section][key]
            if not isinstance(value, expected):
                raise ConfigError(
                    f"{source}: {section}.{key} must be a {_TYPE_WORDS[expected]}, not {type(value).__name__}"
                )
            changes[field] = _normalise_profile_value(f"{section}.{key}", value, source)
    profile = dataclasses.replace(Profile(), **changes)
    validate_profile(profile, source)
    return profile


_TYPE_WORDS = {str: "string", list: "list", dict: "table", bool: "true/false"}


def _normalise_profile_value(key: str, value: Any, source: str) -> Any:
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise ConfigError(f"{source}: {key} must list strings or whole numbers")
        if key in ("students.tables", "students.exclude_names", "output.columns"):
            return tuple(str(item) for item in value)
        return tuple(code_text(item) for item in value)
    if isinstance(value, dict):
        mapping = {}
        for code, letter in value.items():
            if not isinstance(letter, str) or code_text(code) is None:
                raise ConfigError(f'{source}: {key}."{code}" must map a code to a letter string')
            mapping[code_text(code)] = letter.strip().upper()
        return mapping
    return value


def validate_profile(profile: Profile, source: str = "config") -> None:
    """Reject a profile that could not produce a correct file, naming the key."""
    if profile.race_source not in ("state", "studentrace"):
        raise ConfigError(
            f'{source}: race.source must be "state" or "studentrace", not "{profile.race_source}"'
        )
    for key, codes in (
        ("race.state_codes", profile.state_codes),
        ("race.studentrace_codes", profile.studentrace_codes),
    ):
        for code, letter in codes.items():
            if letter not in CLEVER_RACE_LETTERS:
                raise ConfigError(
                    f'{source}: {key}."{code}" = "{letter}" is not a Clever race; '
                    "use A, B, I, M, P, W or an empty string"
                )
    if profile.race_source == "studentrace" and not profile.studentrace_codes:
        raise ConfigError(
            f'{source}: race.source = "studentrace" needs race.studentrace_codes '
            "(your district's RACECD -> A/B/I/M/P/W)"
        )
    overlap = set(profile.hispanic_yes) & set(profile.hispanic_no)
    if overlap:
        raise ConfigError(f"{source}: hispanic.yes and hispanic.no both list {sorted(overlap)}")
    unknown_columns = [c for c in profile.columns if c not in OUTPUT_COLUMNS]
    if unknown_columns or len(set(profile.columns)) != len(profile.columns):
        raise ConfigError(
            f"{source}: output.columns must name each of {', '.join(OUTPUT_COLUMNS)} "
            f"at most once; got {list(profile.columns)}"
        )
    if "student_number" not in profile.columns:
        raise ConfigError(f"{source}: output.columns must include student_number (AutoComm matches on it)")
    if not profile.file_name or "/" in profile.file_name or "\\" in profile.file_name:
        raise ConfigError(f"{source}: output.file_name must be a plain file name, not a path")
    if not profile.remote_dir.startswith("/"):
        raise ConfigError(f"{source}: output.remote_dir must be an absolute path such as /sftp/clever/")
    query_words = set(re.findall(r"[a-z_][a-z0-9_$#]*", profile.query.lower()))
    for column in profile.required_columns():
        if column not in query_words:
            raise ConfigError(
                f"{source}: students.query does not return the column {column}; "
                f"it must return {', '.join(profile.required_columns())}"
            )
    names = [
        profile.current_table,
        profile.current_key,
        profile.current_hispanic,
        profile.current_race,
        profile.current_ell,
    ]
    for name in [*profile.tables, *(names if profile.current_table else [])]:
        if not _IDENTIFIER.match(name):
            raise ConfigError(f'{source}: "{name}" is not a plain table or column name')


# --- Environment: connection settings ----------------------------------------


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    user: str
    password: Secret
    dsn: str


@dataclasses.dataclass(frozen=True)
class SftpSettings:
    host: str
    port: int
    username: str
    password: Secret | None
    key_file: Path | None
    key_passphrase: Secret | None

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this server in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _require_env(environ: dict[str, str], name: str, purpose: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"environment variable {name} ({purpose}) is not set; "
            "set it for the account that runs the job (see README, Configuration)"
        )
    return value


def database_settings(environ: dict[str, str]) -> DatabaseSettings:
    user = _require_env(environ, "POWERSCHOOL_READ_USER", "PowerSchool database user")
    password = _require_env(environ, "POWERSCHOOL_DB_PASSWORD", "its password")
    dsn = _require_env(environ, "POWERSCHOOL_PROD_DB", "Easy Connect string such as host:1521/PSPRODDB")
    register_secret(password)
    return DatabaseSettings(user, Secret(password), dsn)


def sftp_settings(environ: dict[str, str], need_login: bool = True) -> SftpSettings:
    host = _require_env(environ, "D118_SFTP_ADDRESS", "SFTP server host name or address")
    port_text = environ.get("D118_SFTP_PORT", "").strip() or "22"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"D118_SFTP_PORT must be a port number 1-65535, not {port_text!r}")
    if not need_login:
        return SftpSettings(host, int(port_text), "", None, None, None)
    username = _require_env(environ, "D118_SFTP_USERNAME", "SFTP user name")
    password = environ.get("D118_SFTP_PASSWORD") or None
    passphrase = environ.get("D118_SFTP_KEY_PASSPHRASE") or None
    key_text = environ.get("D118_SFTP_KEY_FILE", "").strip()
    key_file = beside_script(key_text) if key_text else None
    for secret in (password, passphrase):
        register_secret(secret)
    if key_file is None and password is None:
        raise ConfigError(
            "neither D118_SFTP_PASSWORD nor D118_SFTP_KEY_FILE is set; "
            "set one so the script can log in to the SFTP server"
        )
    if key_file is not None and not os.access(key_file, os.R_OK):
        raise ConfigError(f"D118_SFTP_KEY_FILE {key_file} cannot be read; check the path and permissions")
    return SftpSettings(
        host,
        int(port_text),
        username,
        Secret(password) if password else None,
        key_file,
        Secret(passphrase) if passphrase else None,
    )


def beside_script(path_text: str | Path) -> Path:
    """Relative paths resolve beside the script, never the working directory."""
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else SCRIPT_DIR / path


# --- Secrets never reach a log line ------------------------------------------

_SECRETS: set[str] = set()


def register_secret(value: str | None) -> None:
    if value:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


class RedactSecrets(logging.Filter):
    """Last line of defence: any registered secret in a record becomes ***."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            message = record.getMessage()
            if any(secret in message for secret in _SECRETS):
                record.msg, record.args = redact(message), None
            if record.exc_info and not record.exc_text:  # formatters reuse exc_text
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


# =============================================================================
# Source: one query per run, streamed
# =============================================================================

# Oracle fetch tuning.  In thin mode the execute round trip returns
# `prefetchrows` rows and each later fetch returns `arraysize` rows, so with
# both at 5000 a 1M-row result takes 1M / 5000 = 200 round trips (the default
# arraysize of 100 would take 10,000: 10 s more at 1 ms each).  A batch of
# 5000 short rows is well under 1 MB, so memory stays flat however large the
# district; a larger batch would save little (200 round trips cost ~0.2 s).
FETCH_ARRAYSIZE = 5000


def export_query(profile: Profile, with_current_values: bool) -> str:
    """The one statement a run executes, portable to Oracle and SQLite.

    The profile's query, wrapped with the joins this run needs, if any:
    STUDENTRACE for race codes, and PowerSchool's current custom values for
    --changed-only and --dry-run.  Grouped, so a student stays one row.
    """
    columns, joins = [], []
    if profile.uses_studentrace():
        columns += ["r.race_code", "r.race_count"]
        joins.append(STUDENTRACE_JOIN)
    if with_current_values:
        table, key = profile.current_table, profile.current_key
        current = profile.current_columns()
        columns += [f"c.{name}" for name in current]
        joins.append(
            f"LEFT JOIN (SELECT {key}, {', '.join(f'MAX({field}) {name}' for name, field in current.items())}\n"
            f"           FROM {table} GROUP BY {key}) c\n"
            f"       ON c.{key} = q.dcid"
        )
    if not joins:
        return profile.query
    return "\n".join(
        [
            f"SELECT q.*, {', '.join(columns)}",
            f"FROM ({profile.query}) q",
            *joins,
            "ORDER BY q.student_number",
        ]
    )


def connect_oracle(settings: DatabaseSettings, timeout: float):
    """A thin-mode connection, or DatabaseError within about `timeout` seconds."""
    try:
        import oracledb
    except ImportError:
        raise ConfigError(
            "python-oracledb is not installed; run: python -m pip install -r requirements.txt"
        ) from None
    # python-oracledb's tcp_connect_timeout covers only the TCP handshake; a
    # listener that accepts and then says nothing would hang connect()
    # forever, so the whole call runs in a daemon thread we stop waiting for.
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            outcome["connection"] = oracledb.connect(
                user=settings.user,
                password=settings.password.reveal(),
                dsn=settings.dsn,
                tcp_connect_timeout=timeout,
                retry_count=0,
            )
        except BaseException as error:  # handed to the main thread below
            outcome["error"] = error

    worker = threading.Thread(target=attempt, name="oracle-connect", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise DatabaseError(
            f"database {settings.dsn} did not answer within {timeout:g} seconds; "
            "check POWERSCHOOL_PROD_DB and that the database is up"
        )
    if "error" in outcome:
        raise DatabaseError(
            f"cannot connect to database {settings.dsn}: {_first_line(outcome['error'])}; "
            "check POWERSCHOOL_PROD_DB, POWERSCHOOL_READ_USER and POWERSCHOOL_DB_PASSWORD"
        )
    connection = outcome["connection"]
    connection.call_timeout = int(timeout * 1000)  # each round trip, in ms
    return connection


def connect_sqlite(path: Path):
    if not path.is_file():
        raise ConfigError(f"SQLite file {path} does not exist; check --sqlite")
    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as error:
        raise DatabaseError(f"cannot open SQLite file {path}: {error}") from None


def connect_demo():
    """An in-memory database seeded from the readable sample in demo/."""
    try:
        seed = DEMO_SEED_FILE.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"demo data {DEMO_SEED_FILE} cannot be read ({error.strerror}); "
            "--demo needs the demo/ folder from the repository beside the script"
        ) from None
    connection = sqlite3.connect(":memory:")
    connection.executescript(seed)
    return connection


def stream_rows(connection, sql: str, required: Iterable[str]):
    """Execute `sql` once; return (column index by name, iterator of rows)."""
    cursor = connection.cursor()
    cursor.arraysize = FETCH_ARRAYSIZE
    if hasattr(cursor, "prefetchrows"):  # oracledb; sqlite3 has no such thing
        cursor.prefetchrows = FETCH_ARRAYSIZE
    try:
        cursor.execute(sql)
    except Exception as error:
        raise DatabaseError(
            f"the export query failed: {_first_line(error)}; "
            "check the query in your profile and the account's read access to its tables"
        ) from None
    columns = {description[0].lower(): i for i, description in enumerate(cursor.description)}
    missing = [name for name in required if name not in columns]
    if missing:
        raise ConfigError(
            f"the export query returns no column {', '.join(missing)}; "
            "name them in the query's select list (see the profile examples)"
        )

    def rows() -> Iterator[tuple]:
        try:
            while True:
                batch = cursor.fetchmany(FETCH_ARRAYSIZE)
                if not batch:
                    return
                yield from batch
        except Exception as error:
            raise DatabaseError(f"reading the export query's rows failed: {_first_line(error)}") from None
        finally:
            cursor.close()

    return columns, rows()


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# =============================================================================
# Mapping: pure functions from a database row to Clever's values
# =============================================================================


def code_text(value: Any) -> str | None:
    """A code as text: 16, 16.0, " 16 " and Decimal('16') all become "16".

    None, empty and whitespace give None; non-numeric text is kept stripped.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        number = decimal.Decimal(text)
    except decimal.InvalidOperation:
        return text
    if number.is_finite() and number == number.to_integral_value():
        return str(int(number))
    return text


def student_number_text(value: Any) -> str | None:
    """student_number as an integer (1013.0 -> "1013"); None if not a number."""
    text = code_text(value)
    if text is None or not text.lstrip("-").isdigit():
        return None
    return text


class Letter(NamedTuple):
    value: str  # what Clever receives
    reason: str  # why a value is blank (empty when it is not)


def hispanic_letter(fedethnicity: Any, profile: Profile) -> Letter:
    code = code_text(fedethnicity)
    if code in profile.hispanic_yes:
        return Letter("Y", "")
    if code in profile.hispanic_no:
        return Letter("N", "")
    if code is None:
        return Letter("", "no value")
    if code == "-1":
        return Letter("", "unanswered (-1)")
    return Letter("", f"unknown code {code}")


def ell_letter(lep: Any, profile: Profile) -> Letter:
    return Letter("Y" if code_text(lep) in profile.ell_yes else "N", "")


def studentrace_letter(race_code: Any, race_count: Any, profile: Profile) -> Letter:
    """Race from STUDENTRACE: one race through the district map, two or more M."""
    count = code_text(race_count)
    if count is not None and count.isdigit() and int(count) >= 2:
        return Letter("M", "")
    code = code_text(race_code)
    if code is None:
        return Letter("", "no STUDENTRACE row")
    letter = profile.studentrace_codes.get(code)
    if letter is None:
        return Letter("", f"unknown RACECD {code}")
    return Letter(letter, "" if letter else f"RACECD {code} maps to blank")


def race_letter(state_race: Any, race_code: Any, race_count: Any, profile: Profile) -> Letter:
    if profile.race_source == "studentrace":
        return studentrace_letter(race_code, race_count, profile)
    code = code_text(state_race)
    if code in profile.state_codes_without_race:
        if profile.studentrace_codes:
            return studentrace_letter(race_code, race_count, profile)
        return Letter("", f"state code {code} carries no race (add race.studentrace_codes)")
    if code is None:
        return Letter("", "no value")
    letter = profile.state_codes.get(code)
    if letter is None:
        return Letter("", f"unknown code {code}")
    return Letter(letter, "" if letter else f"code {code} maps to blank")


class StudentValues(NamedTuple):
    student_number: str
    Hispanic_Latino: Letter
    Race: Letter
    ELL: Letter


Letters = tuple[Letter, Letter, Letter]  # Hispanic_Latino, Race, ELL


# The query columns each output value is made from, in RowMapper's key order.
CODE_COLUMNS = ("fedethnicity", "lep", "state_race", "race_code", "race_count")


class RowMapper:
    """Turns rows of the export query into Clever's values. Pure: no I/O.

    A district has a handful of distinct code combinations, so the letters are
    memoised by the row's raw codes: a million rows cost a million dictionary
    look-ups, not a million parses.  Lines are memoised the same way, around
    the student number.
    """

    def __init__(self, profile: Profile, columns: dict[str, int], exclude_names: Iterable[str]):
        self.profile = profile
        self.columns = columns
        self.fields = profile.value_fields()
        self.excluded = frozenset(n.strip().casefold() for n in exclude_names if n.strip())
        self.compares = all(name in columns for name in profile.current_columns())
        self._number_at = columns["student_number"]
        self._names_at = tuple(columns[n] for n in ("first_name", "last_name") if n in columns)
        present = [name for name in CODE_COLUMNS if name in columns]
        self._code_names = tuple(present)
        self._codes_of = _tuple_getter([columns[name] for name in present])
        self._letters: dict[tuple, Letters] = {}
        self._line_parts: dict[Letters, tuple[str, str]] = {}

    def letters(self, row: tuple) -> tuple[str | None, Letters | str]:
        """(student_number, letters), or (None, why the student is skipped)."""
        raw_number = row[self._number_at]
        number = str(raw_number) if type(raw_number) is int else student_number_text(raw_number)
        if number is None:
            return None, f"student DCID {row[self.columns['dcid']]} has no numeric student_number"
        if self.excluded:
            for at in self._names_at:
                name = row[at]
                if name is not None and str(name).strip().casefold() in self.excluded:
                    return None, f"student {number}: test-student name {name!r}"
        codes = self._codes_of(row)
        letters = self._letters.get(codes)
        if letters is None:
            letters = self._letters[codes] = self._decode(codes)
        return number, letters

    def _decode(self, codes: tuple) -> Letters:
        """Letters for one combination of raw codes; absent columns read as NULL."""
        value = dict(zip(self._code_names, codes, strict=True)).get
        profile = self.profile
        return (
            hispanic_letter(value("fedethnicity"), profile),
            race_letter(value("state_race"), value("race_code"), value("race_count"), profile),
            ell_letter(value("lep"), profile),
        )

    def line(self, number: str, letters: Letters) -> str:
        """The file line (without LF) in the profile's column order."""
        parts = self._line_parts.get(letters)
        if parts is None:
            template = output_line(StudentValues("\0", *letters), self.profile.columns)
            parts = self._line_parts[letters] = tuple(template.split("\0"))
        return parts[0] + number + parts[1]


def _tuple_getter(indexes: list[int]) -> Callable[[tuple], tuple]:
    """Like operator.itemgetter, but always returns a tuple."""
    if len(indexes) >= 2:
        return operator.itemgetter(*indexes)
    return lambda row: tuple(row[i] for i in indexes)


def changed_fields(
    values: StudentValues, row: tuple, columns: dict[str, int], fields: Iterable[str] = VALUE_FIELDS
) -> tuple[str, ...]:
    """Each field whose new value differs from what PowerSchool holds now."""
    changes = []
    for field in fields:
        current = row[columns[CURRENT_COLUMN_OF[field]]]
        current_text = "" if current is None else str(current).strip()
        new = getattr(values, field).value
        if current_text != new:
            changes.append(f"{field} {current_text or '(blank)'} \u2192 {new or '(blank)'}")
    return tuple(changes)


def output_line(values: StudentValues, columns: Iterable[str]) -> str:
    """One line of the file, without its LF."""
    return "\t".join(
        values.student_number if column == "student_number" else getattr(values, column).value
        for column in columns
    )


def describe_mapping(values: StudentValues, row: tuple, columns: dict[str, int]) -> str:
    """The -v detail line: which source value became which Clever value."""

    def source(name: str) -> str:
        return repr(row[columns[name]]) if name in columns else "-"

    def shown(letter: Letter) -> str:
        return letter.value or f"blank ({letter.reason})"

    return (
        f"student {values.student_number}: FEDETHNICITY {source('fedethnicity')} -> Hispanic_Latino "
        f"{shown(values.Hispanic_Latino)}; state race {source('state_race')}, RACECD "
        f"{source('race_code')} x{source('race_count')} -> Race {shown(values.Race)}; "
        f"LEP {source('lep')} -> ELL {shown(values.ELL)}"
    )


@dataclasses.dataclass
class Summary:
    """Counts for the summary line and the --dry-run report."""

    fields: tuple[str, ...] = VALUE_FIELDS
    written: int = 0
    skipped: int = 0
    changed: int = 0
    compared: bool = False
    # Students per combination of letters; every other count derives from it.
    combinations: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def count(self, letters: Letters) -> None:
        self.combinations[letters] += 1

    @property
    def active(self) -> int:
        """Active students exported (before --changed-only)."""
        return self.combinations.total()

    def letter_counts(self, field: str) -> collections.Counter:
        position = VALUE_FIELDS.index(field)
        counts: collections.Counter = collections.Counter()
        for letters, students in self.combinations.items():
            counts[letters[position]] += students
        return counts

    def blanks(self, field: str) -> int:
        return sum(n for letter, n in self.letter_counts(field).items() if not letter.value)

    def line(self, seconds: float) -> str:
        changed = f", changed {self.changed}" if self.compared else ""
        blanks = "".join(f", blank {field} {self.blanks(field)}" for field in self.fields)
        return (
            f"summary: written {self.written}, skipped {self.skipped}, active {self.active}"
            f"{changed}{blanks}, seconds {seconds:.2f}"
        )

    def report(self) -> str:
        lines = ["dry run: nothing uploaded", f"  active students: {self.active}"]
        for field in self.fields:
            by_letter = self.letter_counts(field)
            values: collections.Counter = collections.Counter()
            reasons: collections.Counter = collections.Counter()
            for letter, students in by_letter.items():
                values[letter.value] += students
                if not letter.value:
                    reasons[letter.reason] += students
            counts = ", ".join(f"{value or 'blank'} {n}" for value, n in sorted(values.items()))
            lines.append(f"  {field}: {counts or 'none'}")
            lines.extend(f"    blank, {reason}: {n}" for reason, n in reasons.most_common())
        lines.append(f"  skipped: {self.skipped}")
        if self.compared:
            lines.append(f"  would change: {self.changed} of {self.active}")
        else:
            lines.append("  would change: not compared (the profile names no current_values table)")
        return "\n".join(lines)


def export_lines(
    rows: Iterable[tuple], mapper: RowMapper, summary: Summary, changed_only: bool
) -> Iterator[str]:
    """Lines for the file; counts every student into `summary` as it goes."""
    detail = LOG.isEnabledFor(logging.DEBUG)
    compares = mapper.compares
    for row in rows:
        number, letters = mapper.letters(row)
        if number is None:
            summary.skipped += 1
            LOG.info("skipped %s", letters)
            continue
        summary.count(letters)
        if detail or compares:
            values = StudentValues(number, *letters)
            if detail:
                LOG.debug("%s", describe_mapping(values, row, mapper.columns))
            changes = changed_fields(values, row, mapper.columns, mapper.fields) if compares else ()
            if changes:
                summary.changed += 1
                if changed_only:
                    LOG.info("student %s: %s", number, "; ".join(changes))
            elif changed_only:
                continue
        summary.written += 1
        yield mapper.line(number, letters)


# =============================================================================
# File: UTF-8, LF, tab-delimited, replaced atomically
# =============================================================================


def write_export(lines: Iterable[str], path: Path, header: Iterable[str] | None = None) -> int:
    """Write the lines to `path` via a temporary file and rename; return bytes written.

    newline="\\n" keeps LF on Windows; encoding="utf-8" (no BOM) whatever the
    system code page.  A crash leaves the previous file, never half a file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            if header is not None:
                handle.write("\t".join(header) + "\n")
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    return path.stat().st_size


def read_state(path: Path) -> dict[str, Any]:
    """The last successful upload's record, or {} if there is none yet."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"state file {path} cannot be read ({error}); fix or delete it "
            "(the next run then has no previous count to compare)"
        ) from None


def write_state(path: Path, students: int) -> None:
    record = {"last_upload": {"students": students, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    write_export([json.dumps(record, indent=2)], path)


def check_guard(students: int, previous: int | None, max_drop_percent: float) -> None:
    """Refuse an export that looks collapsed (a broken query, an empty table)."""
    if students == 0:
        raise GuardError(
            "the export has 0 students, so it was not uploaded; check the database "
            "and the query, or rerun with --force if that is really right"
        )
    if previous:
        drop = 100.0 * (previous - students) / previous
        if drop > max_drop_percent:
            raise GuardError(
                f"the export has {students} students, {drop:.1f}% fewer than the {previous} "
                f"of the last upload (limit --max-drop {max_drop_percent:g}%), so it was not "
                "uploaded; check the data, or rerun with --force if the drop is real"
            )


# =============================================================================
# Upload: SFTP with verified host keys, temporary name, rename, size check
# =============================================================================


def load_known_hosts(known_hosts_path: Path, sftp: SftpSettings) -> None:
    """Check, before any work, that known_hosts is readable (else ConfigError)
    and holds the server (else SftpError); connecting then verifies the key."""
    import paramiko

    if not known_hosts_path.is_file():
        raise ConfigError(
            f"known_hosts file {known_hosts_path} does not exist; create it with the "
            "server's key (run --show-host-key and see README, Host key)"
        )
    host_keys = paramiko.HostKeys()
    try:
        host_keys.load(str(known_hosts_path))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(
            f"known_hosts file {known_hosts_path} cannot be read ({error}); check its permissions"
        ) from None
    if host_keys.lookup(sftp.known_hosts_name) is None:
        raise SftpError(
            f"{known_hosts_path} has no host key for {sftp.known_hosts_name}; run "
            "clever_export.py --show-host-key, compare the fingerprint with the server's, "
            "and add the line it prints"
        )


def fingerprint_line(key, host_name: str) -> str:
    """The key's fingerprint as `ssh-keygen -lf` prints it."""
    kind = key.algorithm_name
    return f"{key.get_bits()} {key.fingerprint} {host_name} ({kind})"


def open_sftp(sftp: SftpSettings, known_hosts_path: Path, timeout: float):
    """Log in with the host key checked against known_hosts; return (client, sftp)."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            sftp.host,
            port=sftp.port,
            username=sftp.username,
            password=sftp.password.reveal() if sftp.password else None,
            key_filename=str(sftp.key_file) if sftp.key_file else None,
            passphrase=sftp.key_passphrase.reveal() if sftp.key_passphrase else None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
        session = client.open_sftp()
        session.get_channel().settimeout(timeout)
    except BaseException as error:
        client.close()
        raise sftp_failure(error, sftp, known_hosts_path) from None
    return client, session


def sftp_failure(error: BaseException, sftp: SftpSettings, known_hosts_path: Path) -> BaseException:
    """Translate a paramiko or socket error into one actionable SftpError."""
    import paramiko

    where = f"{sftp.host}:{sftp.port}"
    if isinstance(error, ExportError) or not isinstance(error, Exception):
        return error
    if isinstance(error, paramiko.BadHostKeyException):
        return SftpError(
            f"host key of {where} does not match known_hosts ({error.key.fingerprint} offered, "
            f"{error.expected_key.fingerprint} expected): possibly an attack, or the server was "
            f"rebuilt; ask its administrator, then replace its line in {known_hosts_path}"
        )
    if isinstance(error, paramiko.SSHException) and "not found in known_hosts" in str(error):
        return SftpError(
            f"{where} is not in {known_hosts_path}; run clever_export.py --show-host-key, "
            "compare the fingerprint with the server's, and add the line it prints"
        )
    if isinstance(error, paramiko.PasswordRequiredException):
        return SftpError(f"key file {sftp.key_file} is encrypted; set D118_SFTP_KEY_PASSPHRASE")
    if isinstance(error, paramiko.AuthenticationException):
        return SftpError(
            f"SFTP login as {sftp.username} on {where} failed ({_first_line(error)}); check "
            "D118_SFTP_USERNAME and D118_SFTP_PASSWORD or D118_SFTP_KEY_FILE"
        )
    if isinstance(error, PermissionError):
        return SftpError(
            f"SFTP server {where} refused access ({_first_line(error)}); "
            f"give {sftp.username} write permission on the remote directory"
        )
    if isinstance(error, FileNotFoundError):
        return SftpError(
            f"SFTP path not found on {where} ({_first_line(error)}); "
            "create the remote directory or fix --remote-dir"
        )
    if isinstance(error, socket.gaierror):
        return SftpError(f"cannot resolve SFTP host {sftp.host!r}; check D118_SFTP_ADDRESS")
    if isinstance(error, (OSError, EOFError, paramiko.SSHException)):
        return TransientSftpError(
            f"SFTP connection to {where} failed: {_first_line(error)}; check the server is up "
            "and reachable (D118_SFTP_ADDRESS, D118_SFTP_PORT, firewall)"
        )
    return error


def put_atomically(session, local_path: Path, remote_dir: str, final_name: str) -> int:
    """Upload to a temporary name, rename over the final one, check the size.

    The temporary name is fixed, so a retry or the next night overwrites a
    leftover instead of piling up partial files.
    """
    final_path = posixpath.join(remote_dir, final_name)
    partial_path = posixpath.join(remote_dir, f".{final_name}.partial")
    local_size = local_path.stat().st_size
    session.put(str(local_path), partial_path, confirm=True)  # confirm: checks the partial's size
    try:
        session.posix_rename(partial_path, final_path)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError:
        # No posix-rename@openssh.com: plain SFTP rename refuses to replace,
        # so move the old file aside first and put it back if that fails.
        _replace_without_posix_rename(session, partial_path, final_path)
    remote_size = session.stat(final_path).st_size
    if remote_size != local_size:
        raise SftpError(
            f"{final_path} on the server has {remote_size} bytes, expected {local_size}; "
            "check the server's disk space and rerun"
        )
    return remote_size


def _replace_without_posix_rename(session, partial_path: str, final_path: str) -> None:
    previous_path = final_path + ".previous"
    try:
        session.stat(final_path)
    except FileNotFoundError:
        session.rename(partial_path, final_path)
        return
    with contextlib.suppress(OSError):
        session.remove(previous_path)
    session.rename(final_path, previous_path)
    try:
        session.rename(partial_path, final_path)
    except BaseException:
        session.rename(previous_path, final_path)
        raise
    session.remove(previous_path)


def upload(
    local_path: Path,
    remote_dir: str,
    final_name: str,
    sftp: SftpSettings,
    known_hosts_path: Path,
    timeout: float,
    retries: int,
    retry_wait: float,
) -> int:
    """Upload with retries for transient network failures; return remote bytes."""
    for attempt in range(1, retries + 1):
        try:
            client, session = open_sftp(sftp, known_hosts_path, timeout)
            try:
                return put_atomically(session, local_path, remote_dir, final_name)
            except BaseException as error:
                raise sftp_failure(error, sftp, known_hosts_path) from None
            finally:
                client.close()
        except TransientSftpError as error:
            if attempt == retries:
                raise SftpError(f"{error} (gave up after {retries} attempts)") from None
            wait = retry_wait * 2 ** (attempt - 1)
            LOG.warning("upload attempt %d of %d failed: %s; retrying in %gs", attempt, retries, error, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def fetch_host_key(sftp: SftpSettings, known_hosts_path: Path, timeout: float):
    """The key the server offers, fetched without logging in or trusting it."""
    import paramiko

    try:
        sock = socket.create_connection((sftp.host, sftp.port), timeout=timeout)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = timeout
        try:
            transport.start_client(timeout=timeout)
            return transport.get_remote_server_key()
        finally:
            transport.close()
    except BaseException as error:
        raise sftp_failure(error, sftp, known_hosts_path) from None


# =============================================================================
# Run: lock, logging, monitoring, the export itself, --check
# =============================================================================


class RunLock:
    """An OS-level lock beside the script; the OS releases it if a run crashes."""

    def __init__(self, path: Path):
        import filelock

        self._lock = filelock.FileLock(str(path), timeout=0)
        self._timeout_error = filelock.Timeout
        self.path = path

    def __enter__(self) -> RunLock:
        try:
            self._lock.acquire()
        except self._timeout_error:
            raise LockedError(
                f"another clever_export run holds {self.path}; this run did nothing. "
                "If runs overlap every night, schedule them further apart"
            ) from None
        except OSError as error:
            raise ConfigError(f"cannot create lock file {self.path}: {error.strerror}") from None
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()


class RecentLines(logging.Handler):
    """Keeps the last log lines in memory for the failure ping."""

    def __init__(self, size: int = 40):
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class OneLine(logging.Formatter):
    """stderr gets one line per problem; tracebacks stay in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname}: {record.getMessage()}"


def setup_logging(log_path: Path, verbose: bool, quiet: bool) -> RecentLines:
    # A Windows console or a redirected Task Scheduler stream may not be
    # UTF-8: escape what it cannot show rather than fail on a student's name.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    LOG.handlers.clear()
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOG.propagate = False
    redact = RedactSecrets()
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    handlers: list[logging.Handler] = []
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                log_path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8"
            )
        )
    except OSError as error:
        raise ConfigError(f"cannot write log file {log_path}: {error.strerror}; check --log-file") from None
    handlers[0].setFormatter(formatter)
    recent = RecentLines()
    recent.setFormatter(formatter)
    handlers.append(recent)
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    errors.setFormatter(OneLine())
    handlers.append(errors)
    if not quiet:
        progress = logging.StreamHandler(sys.stdout)
        progress.setLevel(logging.INFO)
        progress.addFilter(lambda record: record.levelno < logging.WARNING)
        progress.setFormatter(logging.Formatter("%(message)s"))
        handlers.append(progress)
    for handler in handlers:
        handler.addFilter(redact)
        LOG.addHandler(handler)
    # paramiko logs its own tracebacks; keep them out of stderr (cron mail).
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    return recent


def close_logging() -> None:
    for handler in list(LOG.handlers):
        handler.close()
        LOG.removeHandler(handler)


def ping(url: str | None, suffix: str = "", body: str = "", timeout: float = 10.0) -> None:
    """Healthchecks-style ping; a monitoring outage must not fail the export."""
    if not url:
        return
    target = url.rstrip("/") + suffix
    try:
        request = urllib.request.Request(target, data=body.encode("utf-8"), method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1024)
    except Exception as error:
        LOG.warning("monitoring ping to %s failed: %s", target, _first_line(error))


@dataclasses.dataclass
class RunOptions:
    """The command line, resolved: what one run does."""

    profile: Profile
    source: str  # "oracle", "sqlite" or "demo"
    sqlite_path: Path | None
    output_path: Path
    remote_dir: str
    known_hosts_path: Path
    state_path: Path
    lock_path: Path
    exclude_names: tuple[str, ...]
    upload: bool
    dry_run: bool
    changed_only: bool
    force: bool
    max_drop_percent: float
    timeout: float
    retries: int
    retry_wait: float


def open_source(options: RunOptions, database: DatabaseSettings | None):
    if options.source == "demo":
        return connect_demo()
    if options.source == "sqlite":
        return connect_sqlite(options.sqlite_path)
    return connect_oracle(database, options.timeout)


def describe_source(options: RunOptions, database: DatabaseSettings | None) -> str:
    if options.source == "oracle":
        return f"Oracle {database.dsn} as {database.user}"
    return "demo data" if options.source == "demo" else f"SQLite {options.sqlite_path}"


def run_export(options: RunOptions, environ: dict[str, str]) -> Summary:
    started = time.monotonic()
    profile = options.profile
    # Every setting is read and checked before the database is touched.
    database = database_settings(environ) if options.source == "oracle" else None
    sftp = None
    if options.upload:
        sftp = sftp_settings(environ)
        load_known_hosts(options.known_hosts_path, sftp)

    compare = options.changed_only or (options.dry_run and profile.can_compare())
    if options.changed_only and not profile.can_compare():
        raise ConfigError("--changed-only needs current_values.table in the profile")
    required = profile.required_columns()
    required += ("race_code", "race_count") if profile.uses_studentrace() else ()
    required += tuple(profile.current_columns()) if compare else ()
    summary = Summary(fields=profile.value_fields(), compared=compare)
    with RunLock(options.lock_path):
        LOG.info("export started: profile %s, %s", profile.name, describe_source(options, database))
        connection = open_source(options, database)
        try:
            columns, rows = stream_rows(connection, export_query(profile, compare), required)
            mapper = RowMapper(profile, columns, options.exclude_names)
            lines = export_lines(rows, mapper, summary, options.changed_only)
            size = write_export(lines, options.output_path, profile.columns if profile.header else None)
        finally:
            connection.close()
        LOG.info("wrote %s (%d students, %d bytes)", options.output_path, summary.written, size)

        if options.dry_run:
            LOG.info("%s", summary.report())
        if options.upload and not options.dry_run:
            if not options.force:
                previous = read_state(options.state_path).get("last_upload", {}).get("students")
                check_guard(summary.active, previous, options.max_drop_percent)
            remote_size = upload(
                options.output_path,
                options.remote_dir,
                profile.file_name,
                sftp,
                options.known_hosts_path,
                options.timeout,
                options.retries,
                options.retry_wait,
            )
            LOG.info(
                "uploaded to %s:%s (%d bytes)",
                sftp.host,
                posixpath.join(options.remote_dir, profile.file_name),
                remote_size,
            )
            write_state(options.state_path, summary.active)
    LOG.info("%s", summary.line(time.monotonic() - started))
    return summary


def run_check(options: RunOptions, environ: dict[str, str]) -> int:
    """--check: one line per check; exit code of the first failure's class."""
    first_failure = EXIT_OK

    def check(label: str, action: Callable[[], Any]) -> Any:
        nonlocal first_failure
        try:
            result = action()
        except ExportError as error:
            print(f"[FAIL] {label}: {error}")
            first_failure = first_failure or error.exit_code
            return None
        print(f"[ ok ] {label}")
        return result if result is not None else True

    database = None
    if options.source == "oracle":
        database = check("database variables set", lambda: database_settings(environ))
    sftp = check("SFTP variables set", lambda: sftp_settings(environ))
    host_known = sftp and check(
        f"known_hosts {options.known_hosts_path} holds {sftp.known_hosts_name}",
        lambda: load_known_hosts(options.known_hosts_path, sftp),
    )
    if database or options.source != "oracle":
        connection = check(
            f"database login ({describe_source(options, database)})", lambda: open_source(options, database)
        )
        if connection:
            for table in options.profile.tables_read():
                check(f"table {table} readable", lambda table=table: _probe_table(connection, table))
            connection.close()
    if host_known:
        opened = check("SFTP login", lambda: open_sftp(sftp, options.known_hosts_path, options.timeout))
        if opened:
            client, session = opened
            try:
                check(
                    f"remote directory {options.remote_dir} writable",
                    lambda: _probe_remote_dir(session, options.remote_dir, sftp, options),
                )
            finally:
                client.close()
    print("all checks passed" if first_failure == EXIT_OK else "some checks failed")
    return first_failure


def _probe_table(connection, table: str) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute(f"SELECT * FROM {table} WHERE 1 = 0")
    except Exception as error:
        raise DatabaseError(
            f"cannot read {table}: {_first_line(error)}; grant SELECT to the read user"
        ) from None
    finally:
        cursor.close()


def _probe_remote_dir(session, remote_dir: str, sftp: SftpSettings, options: RunOptions) -> None:
    probe_path = posixpath.join(remote_dir, f".clever_export_probe_{os.getpid()}")
    try:
        with session.open(probe_path, "w") as probe:
            probe.write(b"probe\n")
        session.remove(probe_path)
    except BaseException as error:
        raise sftp_failure(error, sftp, options.known_hosts_path) from None


def show_host_key(options: RunOptions, environ: dict[str, str]) -> int:
    sftp = sftp_settings(environ, need_login=False)
    key = fetch_host_key(sftp, options.known_hosts_path, options.timeout)
    name = sftp.known_hosts_name
    print(f"# {sftp.host} port {sftp.port} offered this host key. Trust nothing yet: compare its")
    print("# fingerprint with the server's own, on the server:")
    print(f"#   ssh-keygen -lf /etc/ssh/ssh_host_{key.algorithm_name.lower()}_key.pub")
    print(f"# {fingerprint_line(key, name)}")
    print(f"# If they match, add the next line to {options.known_hosts_path}")
    print(f"{name} {key.get_name()} {key.get_base64()}")
    return EXIT_OK


# =============================================================================
# Command line
# =============================================================================

EPILOG = """\
environment:
  POWERSCHOOL_READ_USER      PowerSchool (Oracle) read-only user
  POWERSCHOOL_DB_PASSWORD    its password (never printed or logged)
  POWERSCHOOL_PROD_DB        Easy Connect string, e.g. psdb.example.org:1521/PSPRODDB
  D118_SFTP_ADDRESS          SFTP server host name or address
  D118_SFTP_PORT             SFTP port (default 22)
  D118_SFTP_USERNAME         SFTP user
  D118_SFTP_PASSWORD         SFTP password, or instead:
  D118_SFTP_KEY_FILE         private key file (relative paths: beside the script)
  D118_SFTP_KEY_PASSPHRASE   the key's passphrase, if it has one

exit codes:
  0 success          1 unexpected error (see the log)   2 usage or configuration
  3 database         4 SFTP (connect, login, host key)   5 safety guard refused
  75 another run holds the lock (try again later)

examples:
  python clever_export.py --demo               try it on bundled sample data
  python clever_export.py --check              verify the set-up, export nothing
  python clever_export.py --show-host-key      print the server's key for known_hosts
  python clever_export.py                      the nightly run
  python clever_export.py --dry-run -v         everything but the upload, with a report
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clever_export.py",
        # The manual's first page is the module docstring, up to its Guarantees.
        description=__doc__.split("\nGuarantees\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_argument_group("what to do (default: export and upload)")
    mode.add_argument(
        "--demo",
        action="store_true",
        help=f"run on bundled sample data (demo/), write {DEMO_OUTPUT_NAME} beside the "
        "script, upload nothing",
    )
    mode.add_argument(
        "--check",
        action="store_true",
        help="verify variables, known_hosts, database tables, SFTP login and "
        "remote write access; export nothing",
    )
    mode.add_argument(
        "--show-host-key",
        action="store_true",
        help="print the SFTP server's key as a known_hosts line with its fingerprint; trusts nothing",
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="everything except the upload, then a report of values, blanks and changes",
    )
    mode.add_argument("--no-upload", action="store_true", help="write the file only; needs no SFTP settings")
    source = parser.add_argument_group("source and profile")
    source.add_argument(
        "--sqlite",
        metavar="PATH",
        type=Path,
        help="read the PowerSchool tables from a SQLite file instead of Oracle",
    )
    source.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="TOML profile overriding the built-in Illinois one (see examples/)",
    )
    source.add_argument(
        "--exclude-name",
        metavar="NAME",
        action="append",
        help="skip students whose first or last name is NAME (any case, exact); "
        "repeatable; replaces the default list, which is TEST",
    )
    source.add_argument(
        "--changed-only",
        action="store_true",
        help="write only students whose values differ from PowerSchool's current custom fields",
    )
    files = parser.add_argument_group("files (relative paths resolve beside the script)")
    files.add_argument(
        "--output",
        metavar="PATH",
        type=Path,
        help="the local export file (default: raceethnicity.txt beside the script)",
    )
    files.add_argument("--remote-dir", metavar="DIR", help="remote directory (default: /sftp/clever/)")
    files.add_argument(
        "--known-hosts",
        metavar="PATH",
        type=Path,
        default=DEFAULT_KNOWN_HOSTS,
        help="OpenSSH known_hosts file holding the server's key (default: known_hosts beside the script)",
    )
    files.add_argument(
        "--log-file",
        metavar="PATH",
        type=Path,
        default=DEFAULT_LOG_FILE,
        help="appended, rotated log (default: clever_export.log beside the script)",
    )
    files.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        default=DEFAULT_STATE_FILE,
        help="the last upload's student count, for the safety guard "
        "(default: clever_export.state.json beside the script)",
    )
    safety = parser.add_argument_group("safety and reliability")
    safety.add_argument(
        "--max-drop",
        metavar="PERCENT",
        type=float,
        default=DEFAULT_MAX_DROP_PERCENT,
        help="refuse to upload if there are more than PERCENT fewer students "
        "than at the last upload (default: %(default)g)",
    )
    safety.add_argument(
        "--force", action="store_true", help="upload even if the safety guard objects (this run only)"
    )
    safety.add_argument(
        "--retries",
        metavar="N",
        type=int,
        default=DEFAULT_RETRIES,
        help="upload attempts for network failures (default: %(default)s)",
    )
    safety.add_argument(
        "--retry-wait",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_RETRY_WAIT_SECONDS,
        help="wait before the 2nd attempt, doubling after (default: %(default)g)",
    )
    safety.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="connect, login and per-operation timeout for the database and SFTP (default: %(default)g)",
    )
    safety.add_argument(
        "--ping-url",
        metavar="URL",
        help="Healthchecks-style monitoring: URL/start, URL on success, URL/fail with the last log lines",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "-v", "--verbose", action="store_true", help="log how each student's values were mapped"
    )
    output.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing on success (errors still go to stderr)"
    )
    output.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def resolve_options(args: argparse.Namespace, profile: Profile) -> RunOptions:
    if sum((args.demo, args.check, args.show_host_key)) > 1:
        raise ConfigError("choose one of --demo, --check and --show-host-key")
    if args.demo and args.sqlite:
        raise ConfigError("--demo uses its own sample data; leave out --sqlite")
    if args.retries < 1:
        raise ConfigError("--retries must be at least 1")
    if args.timeout <= 0 or args.retry_wait < 0 or not 0 <= args.max_drop <= 100:
        raise ConfigError("--timeout must be positive, --retry-wait not negative, --max-drop 0-100")
    remote_dir = args.remote_dir or profile.remote_dir
    if not remote_dir.startswith("/"):
        raise ConfigError(f"--remote-dir must be an absolute path such as /sftp/clever/, not {remote_dir!r}")
    default_output = DEMO_OUTPUT_NAME if args.demo else profile.file_name
    return RunOptions(
        profile=profile,
        source="demo" if args.demo else "sqlite" if args.sqlite else "oracle",
        sqlite_path=beside_script(args.sqlite) if args.sqlite else None,
        output_path=beside_script(args.output or default_output),
        remote_dir=remote_dir,
        known_hosts_path=beside_script(args.known_hosts),
        state_path=beside_script(args.state_file),
        lock_path=DEFAULT_LOCK_FILE,
        exclude_names=tuple(args.exclude_name) if args.exclude_name is not None else profile.exclude_names,
        upload=not (args.no_upload or args.demo or args.dry_run),
        dry_run=args.dry_run,
        changed_only=args.changed_only,
        force=args.force,
        max_drop_percent=args.max_drop,
        timeout=args.timeout,
        retries=args.retries,
        retry_wait=args.retry_wait,
    )


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Run the command line; return the exit code. The one place failures become codes."""
    environ = dict(os.environ if environ is None else environ)
    args = None
    recent = None
    try:
        args = build_parser().parse_args(argv)
        recent = setup_logging(beside_script(args.log_file), args.verbose, args.quiet)
        options = resolve_options(args, load_profile(beside_script(args.config) if args.config else None))
        if args.show_host_key:
            return show_host_key(options, environ)
        if args.check:
            return run_check(options, environ)
        ping(args.ping_url, "/start")
        run_export(options, environ)
        ping(args.ping_url)
        return EXIT_OK
    except SystemExit as exit_request:  # --help and --version
        return int(exit_request.code or 0)
    except ExportError as error:
        _report_failure(str(error), args, recent)
        return error.exit_code
    except KeyboardInterrupt:
        _report_failure("interrupted", args, recent)
        return 130
    except Exception as error:
        _report_failure(
            f"unexpected error: {type(error).__name__}: {_first_line(error)} "
            "(the log has the traceback; please report it)",
            args,
            recent,
            with_traceback=True,
        )
        return EXIT_UNEXPECTED
    finally:
        close_logging()


def _report_failure(message: str, args, recent: RecentLines | None, with_traceback: bool = False) -> None:
    if not LOG.handlers:  # logging not set up yet (bad flag, unwritable log)
        print(f"ERROR: {redact(message)}", file=sys.stderr)
        return
    LOG.error("%s", message, exc_info=with_traceback)
    if args is not None and getattr(args, "ping_url", None) and not (args.check or args.show_host_key):
        ping(args.ping_url, "/fail", "\n".join(recent.lines) if recent else message)


if __name__ == "__main__":
    sys.exit(main())
