#!/usr/bin/env python3
"""clever_export.py - nightly PowerSchool -> Clever race, ethnicity and ELL export.

Every night this script reads all active students (ENROLL_STATUS = 0; the
profile's students.enroll_statuses can add -1, pre-registered) from
PowerSchool's Oracle database with ONE query, maps the Illinois state codes to
the values Clever accepts, writes a tab-delimited UTF-8 file with LF line
endings, and places it on the district's SFTP server, where a PowerSchool
AutoComm job imports it into the custom fields Clever syncs.

    student_number <TAB> Hispanic_Latino <TAB> Race <TAB> ELL <LF>

  Race             from S_IL_STU_DEMOGRAPHICS_X.FER: 12 I, 13 A, 14 B, 15 P,
                   16 W, 17 M; 11 (Hispanic), NULL or unknown -> blank.
                   Hispanic students take their race from STUDENTRACE when
                   the district supplies its RACECD map (--config): two or
                   more different races give M.
  Hispanic_Latino  from STUDENTS.FEDETHNICITY: 1 Y, 0 N; -1 (unanswered),
                   2 (declined to specify) or NULL -> blank.
  ELL              from S_IL_STU_X.LEP: 1 Y; 0, NULL or no row -> N;
                   anything else -> blank.

Blank means "not known" to Clever: an unanswered question is never sent as N,
and a value is what PowerSchool says or blank with a reason (--dry-run lists
the reasons).  Rows of one student that disagree give blank; two active
students under one student_number get one line if they agree, none if not.

Guarantees
  * Passwords and key passphrases never reach stdout, stderr or the log.
  * Student data goes to the output file, the SFTP server, the log file and
    the import check's copy of the last upload (all mode 600), never to
    stdout, stderr or a monitoring ping.
  * The SFTP server's host key must be in the known_hosts file beside the
    script (or --known-hosts).  There is no switch to skip this check.
  * The importer never sees half a file: the local file is written to a
    temporary name and renamed; the upload goes to a temporary name created
    exclusively in the remote directory, is renamed over the final name, and
    its size is checked.
  * A failure exits non-zero with one line on stderr naming the problem and
    the fix (under --quiet the only line there; without it, the run's
    warnings come first), and nothing is uploaded after a failure (exit 6 reports last
    night's import, after tonight's upload).
  * One run at a time (an OS lock); a collapsed export (zero students, or a
    large drop since the last upload) is not uploaded.

Exit codes: see --help (generated from EXIT_CODES, the one table).

How the code reads
  The sections follow the data: Settings (constants, the profile, the env
  file, the run's options), Source (the one query), Mapping (rows ->
  Clever's letters, pure), File (the local file and the state file),
  Upload (SFTP), Run (prepare -> export -> publish, --check, --status) and
  Command line (the parser and main).  The call chain of a nightly run:

    main -> resolve_options -> RunLock -> prepare -> export -> publish
            (flags, env,                  (settings,  (the one    (guard,
             profile: once)                login,      query, the  upload,
                                           state)      file)       state)

README.md is the admin's path; docs/ holds the details.
"""

from __future__ import annotations

import signal

if __name__ == "__main__":
    # A stop while the modules load is recorded too (main() acts on it), not a traceback.
    _EARLY_STOPS: list[int] = []
    for _signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(_signum, lambda signum, frame: _EARLY_STOPS.append(signum))

import argparse
import array
import collections
import contextlib
import dataclasses
import datetime
import enum
import functools
import hashlib
import io
import itertools
import json
import logging
import logging.handlers
import math
import operator
import os
import posixpath
import re
import shlex
import shutil
import socket
import sqlite3
import stat
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

__version__ = "3.1.0"  # CHANGELOG.md's top entry

SCRIPT_DIR = Path(__file__).resolve().parent
LOG = logging.getLogger("clever_export")
# Lines for the owner-only log file alone: every line that names a student
# (skips, changes, -v detail), never stdout, stderr or a monitoring ping.
FILE_LOG = logging.getLogger("clever_export.file")

# =============================================================================
# Settings
# =============================================================================

# Default files live beside the script: beside_script() resolves these names
# when a run needs them (so does every relative path an admin gives).
DEFAULT_KNOWN_HOSTS = Path("known_hosts")
DEFAULT_LOG_FILE = Path("clever_export.log")
DEFAULT_STATE_FILE = Path("clever_export.state.json")
LOCK_FILE_NAME = "clever_export.lock"  # beside the state file unless --lock-file
SENT_FILE_NAME = "clever_export.sent.txt"  # the last upload, kept beside the state file for the import check
DEFAULT_IMPORT_DEADLINE_HOURS = 20.0
DEFAULT_IMPORT_TOLERANCE_PERCENT = 1.0
DEFAULT_ENV_FILE = Path("clever_export.env")
DEMO_SEED_FILE = Path("demo", "powerschool_sample.sql")
DEMO_OUTPUT_NAME = "demo-raceethnicity.txt"

DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_RETRIES = 3
DEFAULT_RETRY_WAIT_SECONDS = 10.0
DEFAULT_MAX_DROP_PERCENT = 20.0
LOG_MAX_BYTES = 5 * 1024 * 1024  # x LOG_BACKUPS: the log never exceeds ~30 MB
LOG_BACKUPS = 5

# Exit codes, the one table: --help prints it and a test keeps README.md's equal to it.
EXIT_OK = 0
EXIT_BUG = 1  # only a bug in this script: please report it
EXIT_CONFIG = 2
EXIT_DATABASE = 3
EXIT_SFTP = 4
EXIT_GUARD = 5
EXIT_NOT_IMPORTED = 6  # tonight's file was uploaded; last night's never reached PowerSchool
EXIT_STALE = 7  # --status --max-age only: no successful upload within HOURS
EXIT_LOCKED = 75  # EX_TEMPFAIL from sysexits.h: "try again later"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM, as shells report a kill
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_BUG: "a bug in this script (the log has the traceback; please report it)",
    EXIT_CONFIG: "usage or configuration: a flag, variable, file or profile",
    EXIT_DATABASE: "database: connect or query",
    EXIT_SFTP: "SFTP: connect, login, host key, upload",
    EXIT_GUARD: "safety guard: the export looks wrong, nothing uploaded",
    EXIT_NOT_IMPORTED: "PowerSchool did not import the previous upload (check AutoComm)",
    EXIT_STALE: "--status --max-age: no successful upload within that many hours",
    EXIT_LOCKED: "another run holds the lock (try again later)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_TERMINATED: "terminated (SIGTERM: a service manager or kill)",
}

# Clever's accepted values (blank = unknown).
CLEVER_RACE_LETTERS = frozenset({"A", "B", "I", "M", "P", "W", ""})
OUTPUT_COLUMNS = ("student_number", "Hispanic_Latino", "Race", "ELL")


class ExportError(Exception):
    """An expected failure: its message is the one line an admin reads, and its exit code.
    A subclass stands only where an except clause tells a failure apart (and for the
    codes raised at many places)."""

    exit_code = EXIT_BUG

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code or self.exit_code


class ConfigError(ExportError):
    exit_code = EXIT_CONFIG


class DatabaseError(ExportError):
    exit_code = EXIT_DATABASE


class SftpError(ExportError):
    exit_code = EXIT_SFTP


class TransientSftpError(SftpError):
    """A network failure worth another attempt (refused, reset, timed out)."""


class LockedError(ExportError):
    exit_code = EXIT_LOCKED


# C0/C1 controls, line and paragraph separators, and the bidirectional overrides
# that can make a log line read differently from what it holds.
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def escape_text(value: Any) -> str:
    """Database or file text made safe for one log line: control characters escaped.

    A newline in a custom field must not start a forged log line.
    """
    text = value if isinstance(value, str) else str(value)
    if _CONTROL_CHARACTERS.search(text) is None:
        return text
    return _CONTROL_CHARACTERS.sub(
        lambda match: (
            f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else f"\\u{ord(match.group()):04x}"
        ),
        text,
    )


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
SELECT s.id, s.dcid, s.student_number, s.first_name, s.last_name, s.enroll_status, s.fedethnicity,
       d.fer state_race, x.lep
FROM students s
LEFT JOIN s_il_stu_demographics_x d ON d.studentsdcid = s.dcid
LEFT JOIN s_il_stu_x x ON x.studentsdcid = s.dcid"""
# No WHERE: the export statement keeps the profile's students.enroll_statuses.
# Plain joins, not MAX(...) GROUP BY: extension tables hold one row per
# student by design, and if one ever holds two, the mapping sees both rows and
# writes blank ("conflicting rows") when they disagree, where MAX would pick
# one silently (comparing text as text: ' 1' < '0').


@dataclasses.dataclass(frozen=True)
class Profile:
    """What a state or district changes: query, code maps, names, file shape."""

    name: str = "Illinois (ISBE FER, S_IL_STU_X LEP)"
    query: str = ILLINOIS_QUERY
    tables: tuple[str, ...] = ("students", "s_il_stu_demographics_x", "s_il_stu_x")
    exclude_names: tuple[str, ...] = ("TEST",)
    # STUDENTS.ENROLL_STATUS values exported: 0 active; add -1 (pre-registered)
    # where the district sends next year's students to Clever before they start.
    # None: a profile's own query filters (one written before this setting).
    enroll_statuses: tuple[str, ...] | None = ("0",)
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
    ell_no: tuple[str, ...] = ("0",)
    file_name: str = "raceethnicity.txt"
    remote_dir: str = "/sftp/clever/"
    remote_mode: int = 0o600
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

    def tables_read(self) -> tuple[str, ...]:
        """Every table a nightly run reads."""
        return self.tables + (("studentrace",) if self.uses_studentrace() else ())

    def current_fields(self) -> dict[str, str]:
        """Output field -> the custom field holding PowerSchool's current value."""
        return {field: getattr(self, VALUE_FIELDS[field].current) for field in self.value_fields()}

    def inputs(self) -> tuple[str, ...]:
        """The statement's columns the written fields are made from."""
        wanted = {"state_race": self.race_source == "state", "race_code": self.uses_studentrace()}
        return tuple(
            name
            for field in self.value_fields()
            for name in VALUE_FIELDS[field].inputs
            if wanted.get(name, True)
        )

    def can_compare(self) -> bool:
        return bool(self.current_table)


# TOML layout: [section] key -> Profile field, with the type it must have.
_PROFILE_KEYS: dict[str, dict[str, tuple[str, type]]] = {
    "profile": {"name": ("name", str)},
    "students": {
        "query": ("query", str),
        "tables": ("tables", list),
        "exclude_names": ("exclude_names", list),
        "enroll_statuses": ("enroll_statuses", list),
    },
    "race": {
        "source": ("race_source", str),
        "state_codes": ("state_codes", dict),
        "state_codes_without_race": ("state_codes_without_race", list),
        "studentrace_codes": ("studentrace_codes", dict),
    },
    "hispanic": {"yes": ("hispanic_yes", list), "no": ("hispanic_no", list)},
    "ell": {"yes": ("ell_yes", list), "no": ("ell_no", list)},
    "output": {
        "file_name": ("file_name", str),
        "remote_dir": ("remote_dir", str),
        "columns": ("columns", list),
        "header": ("header", bool),
        "remote_mode": ("remote_mode", str),
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
            # A byte-order mark (Notepad's UTF-8) is not TOML; drop it.
            document = tomllib.loads(config_file.read().decode("utf-8").removeprefix("\ufeff"))
    except OSError as error:
        raise unusable(f"cannot read config file {config_path}", config_path, error, "--config") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file {config_path} is not UTF-8 text; save it as UTF-8 (check --config)"
        ) from None
    except (tomllib.TOMLDecodeError, ValueError) as error:  # ValueError: an integer of 4301+ digits
        raise ConfigError(
            f"config file {config_path} is not valid TOML: {escape_text(error)[:200]}; check --config"
        ) from None
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
    if "query" in changes and "enroll_statuses" not in changes:
        changes["enroll_statuses"] = None  # a query of its own keeps its own WHERE, as before 2.1
    profile = dataclasses.replace(Profile(), **changes)
    validate_profile(profile, source)
    return profile


_TYPE_WORDS = {str: "string", list: "list", dict: "table", bool: "true/false"}


def _normalise_profile_value(key: str, value: Any, source: str) -> Any:
    if key == "output.remote_mode":
        return parse_mode(value, f"{source}: output.remote_mode")
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, (str, int)) or isinstance(item, bool):
                raise ConfigError(f"{source}: {key} must list strings or whole numbers")
        if key in ("students.tables", "students.exclude_names", "output.columns"):
            return tuple(str(item) for item in value)
        return tuple(code_text(item) for item in value)
    if isinstance(value, dict):
        mapping: dict[str, str] = {}
        for code, letter in value.items():
            if not isinstance(letter, str) or code_text(code) is None:
                raise ConfigError(f'{source}: {key}."{shown_code(code)}" must map a code to a letter string')
            normalised, new = code_text(code), letter.strip().upper()
            if mapping.get(normalised, new) != new:
                raise ConfigError(
                    f'{source}: {key} maps "{shown_code(normalised)}" twice (as "{shown_code(code)}" too) '
                    "to different letters; keep one"
                )
            mapping[normalised] = new
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
                    f'{source}: {key}."{shown_code(code)}" = "{shown_code(letter)}" is not a Clever race; '
                    "use A, B, I, M, P, W or an empty string"
                )
    if profile.race_source == "studentrace" and not profile.studentrace_codes:
        raise ConfigError(
            f'{source}: race.source = "studentrace" needs race.studentrace_codes '
            "(your district's RACECD -> A/B/I/M/P/W)"
        )
    for key, yes, no in (
        ("hispanic", profile.hispanic_yes, profile.hispanic_no),
        ("ell", profile.ell_yes, profile.ell_no),
    ):
        if set(yes) & set(no):
            raise ConfigError(f"{source}: {key}.yes and {key}.no both list {sorted(set(yes) & set(no))}")
    validate_output(profile, source)
    if profile.enroll_statuses is not None and not (
        profile.enroll_statuses
        and all(
            isinstance(status, str) and re.fullmatch(r"-?[0-9]{1,3}", status, re.ASCII)
            for status in profile.enroll_statuses
        )
    ):
        raise ConfigError(
            f"{source}: students.enroll_statuses must list whole numbers such as [0] or [0, -1], "
            f"not {list(profile.enroll_statuses)}"
        )
    names = [profile.current_table, profile.current_key, *profile.current_fields().values()]
    for name in [*profile.tables, *(names if profile.current_table else [])]:
        if not _IDENTIFIER.match(name):
            raise ConfigError(f'{source}: "{name}" is not a plain table or column name')


def validate_output(profile: Profile, source: str) -> None:
    """The [output] keys: columns, file name, remote folder."""
    unknown_columns = [c for c in profile.columns if c not in OUTPUT_COLUMNS]
    if unknown_columns or len(set(profile.columns)) != len(profile.columns):
        raise ConfigError(
            f"{source}: output.columns must name each of {', '.join(OUTPUT_COLUMNS)} "
            f"at most once; got {list(profile.columns)}"
        )
    if "student_number" not in profile.columns or len(profile.columns) < 2:
        raise ConfigError(
            f"{source}: output.columns must include student_number (AutoComm matches on it) and at least "
            "one of Hispanic_Latino, Race, ELL"
        )
    check_file_name(profile.file_name, f"{source}: output.file_name")
    if not profile.remote_dir.startswith("/"):
        raise ConfigError(f"{source}: output.remote_dir must be an absolute path such as /sftp/clever/")


def check_file_name(name: str, key: str) -> None:
    """A plain file name for the export, not a path (check_own_files keeps it off the script's files)."""
    if (
        not name
        or name in (".", "..")
        or any(separator in name for separator in ("/", "\\", "\0", ":"))
        or name != name.strip()
    ):
        raise ConfigError(f"{key} must be a plain file name such as raceethnicity.txt, not {name!r}")


def parse_mode(value: Any, key: str) -> int:
    """An octal permission such as "600" or "640": owner keeps read and write."""
    text = str(value).strip()
    if not re.fullmatch(r"0?[0-7]{3}", text, re.ASCII):
        raise ConfigError(f"{key} must be an octal mode such as 600 or 640, not {text!r}")
    mode = int(text, 8)
    if mode & 0o600 != 0o600 or mode & 0o007:
        raise ConfigError(
            f"{key} = {text}: the owner needs read and write (6xx) and others get nothing (xx0); "
            "600 or 640 are the usual choices"
        )
    return mode


# --- Environment: connection settings ----------------------------------------


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    user: str
    password: Secret
    dsn: str  # Easy Connect string or tnsnames.ora alias
    tns_admin: Path | None = None  # the folder holding tnsnames.ora
    client_lib_dir: Path | None = None  # Instant Client: thick mode


@dataclasses.dataclass(frozen=True)
class SftpSettings:
    """Everything needed to reach and trust the SFTP server, in one object."""

    host: str
    port: int
    username: str
    password: Secret | None
    key_file: Path | None
    key_passphrase: Secret | None
    known_hosts_path: Path
    timeout: float
    key: Secret | None = None  # the key itself, from Windows Credential Manager (D118_SFTP_KEY)

    @property
    def logs_in_with_a_key(self) -> bool:
        return self.key_file is not None or self.key is not None

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this server in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # upload attempts for network failures
    wait: float  # seconds before the second attempt, doubling after


@dataclasses.dataclass(frozen=True)
class Settings:
    """Connection settings: the process environment, the platform's sealed store
    (systemd credentials, Windows Credential Manager) and KEY=value lines of the
    env file, in that order of precedence: the first place that holds a setting
    wins (an empty or blank process variable holds nothing).  --check lists each
    setting's place and warns where two places disagree, since a value left from
    an old set-up would win silently, and where a secret sits in the env file
    while the sealed store is there to hold it.
    """

    values: dict[str, str]
    sources: dict[str, str]  # each known setting -> where it came from (never its value)
    env_file: Path | None = None
    warnings: tuple[str, ...] = ()  # for --check

    def override(self, name: str, value: str, source: str) -> Settings:
        """A flag that stands for a setting (--oracle-client), for this run."""
        return dataclasses.replace(
            self, values={**self.values, name: value}, sources={**self.sources, name: source}
        )


# The settings the script reads, one row each: what it is (--help's list, and the
# line naming a missing one) and whether it is a secret (never shown, in any form).
# A test keeps docs/configuration.md and clever_export.env.example equal to it.
SETTINGS: dict[str, tuple[str, bool]] = {
    "POWERSCHOOL_READ_USER": ("PowerSchool (Oracle) read-only user", False),
    "POWERSCHOOL_DB_PASSWORD": ("the read user's password", True),
    "POWERSCHOOL_PROD_DB": ("Easy Connect string (psdb.example.org:1521/PSPRODDB) or tnsnames alias", False),
    "TNS_ADMIN": ("folder holding tnsnames.ora, for an alias", False),
    "ORACLE_CLIENT_LIB_DIR": ("Oracle Instant Client folder: thick mode (see docs/oracle.md)", False),
    "D118_SFTP_ADDRESS": ("SFTP server host name or address", False),
    "D118_SFTP_PORT": ("SFTP port (default 22)", False),
    "D118_SFTP_USERNAME": ("SFTP user", False),
    "D118_SFTP_PASSWORD": ("SFTP password, or instead D118_SFTP_KEY_FILE", True),
    "D118_SFTP_KEY_FILE": ("private key file, OpenSSH format, mode 600 (relative: beside the script)", False),
    "D118_SFTP_KEY_PASSPHRASE": ("the key's passphrase, if it has one", True),
    "CLEVER_NOTIFY": ("Apprise URL(s) alerted when a run fails (see docs/alerts.md)", True),
    "D118_SFTP_KEY": ("the private key itself, in place of D118_SFTP_KEY_FILE: sealed store only", True),
}
SETTING_NAMES = tuple(SETTINGS)
SECRETS = tuple(name for name, (_, secret) in SETTINGS.items() if secret)
CREDENTIAL_TARGET = "clever-export:{}"  # a secret's name in Windows Credential Manager
CREDENTIAL_BLOB_BYTES = 2560  # CRED_MAX_CREDENTIAL_BLOB_SIZE: the most one entry holds


def read_settings(env_file: Path | None, environ: dict[str, str]) -> Settings:
    """The process environment, the sealed store and the env file (clever_export.env
    beside the script, or --env-file), by the one precedence rule of Settings."""
    named = env_file is not None
    path = beside_script(env_file if named else DEFAULT_ENV_FILE)
    exists = named or path.exists()
    from_file = read_env_file(path) if exists else {}
    store, sealed = read_sealed(environ)
    places = {
        "process environment": {name: value for name, value in environ.items() if value.strip()},
        store: sealed,
        "env file": from_file,
    }
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    warnings = []
    for place, held in places.items():
        for name, value in held.items():
            if name in SETTING_NAMES and not value.isprintable() and name != "D118_SFTP_KEY":
                raise ConfigError(  # never the value: it may be a password
                    f"{name} holds characters that are not printable UTF-8 text; set it again (in the {place})"
                )
            if name in sources and name in SETTING_NAMES and (value != values[name] or place != store):
                warnings.append(
                    f"{name}: the {sources[name]} overrides the {place}'s value (remove one of them)"
                )
            values.setdefault(name, value)
            sources.setdefault(name, place)
    if store:
        warnings += [
            f"{name} is in the env file while the {store} can hold it: run --seal-secrets, or move it there "
            "and remove the line (see docs/secrets.md)"
            for name in SECRETS
            if name in from_file
        ]
    sources = {name: place.replace("env file", f"env file {path}") for name, place in sources.items()
               if name in SETTING_NAMES}  # fmt: skip
    return Settings(values, sources, path if exists else None, tuple(warnings))


def read_sealed(environ: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The platform's sealed store, if this run can read one, and the secrets it holds:
    under systemd the credentials of $CREDENTIALS_DIRECTORY (LoadCredentialEncrypted=),
    on Windows the account's generic credentials clever-export:<SETTING>.  An empty or
    unreadable credential is exit 2, named: never "not set"."""
    folder = environ.get("CREDENTIALS_DIRECTORY", "").strip()
    if folder:
        store, found = "systemd credential", {name: Path(folder, name) for name in SECRETS}
        try:
            values = {
                name: path.read_text("utf-8").rstrip("\r\n") for name, path in found.items() if path.exists()
            }
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"a {store} in {folder} cannot be read ({foreign_text(error, 80)}); encrypt it "
                              "again (see docs/secrets.md)") from None  # fmt: skip
        if "D118_SFTP_KEY" in values:  # the key stays a file: the credential's, in systemd's private memory
            values["D118_SFTP_KEY_FILE"] = str(found["D118_SFTP_KEY"])
    elif os.name == "nt":
        store, windows = "Windows Credential Manager", SealedStore()
        values = {name: value for name in SECRETS if (value := windows.read(name)) is not None}
    else:
        return "", {}
    for name, value in values.items():
        if not value.strip():
            raise ConfigError(f"the {store} {name} is empty; store it again (see docs/secrets.md)")
    return store, values


CREDSTORE = Path("/etc/credstore.encrypted")  # where systemd's LoadCredentialEncrypted=NAME looks


def sealed_hint(*names: str) -> str:
    """For a secret this run lacks: that it is sealed for the systemd unit, which alone can read it."""
    with contextlib.suppress(OSError):
        if os.name == "posix" and any((CREDSTORE / name).exists() for name in names):
            return f" here (it is sealed in {CREDSTORE}, for the systemd unit only: see docs/secrets.md, --check)"
    return ""


class SealedStore:
    """The platform's sealed store, written by --seal-secrets: systemd-creds encrypt into
    CREDSTORE (tied to this host, and its TPM where there is one), or the running
    account's Windows Credential Manager (DPAPI: tied to the account)."""

    def __init__(self):
        self.windows = os.name == "nt"
        self.name = "Windows Credential Manager" if self.windows else f"systemd credentials in {CREDSTORE}"

    def _creds(self, *args: str, value: str | None = None) -> str:
        done = subprocess_run(["systemd-creds", *args], value)
        if done.returncode:
            raise ConfigError(
                f"systemd-creds {args[0]} failed ({foreign_text(done.stderr.decode('utf-8', 'replace').strip())})"
            )
        return done.stdout.decode("utf-8")

    def write(self, name: str, value: str) -> None:
        if self.windows:
            from win32ctypes.pywin32 import win32cred

            if len(value.encode("utf-16-le")) > CREDENTIAL_BLOB_BYTES:  # Windows refuses it, Wine does not
                raise ConfigError(f"{name} is longer than a Windows Credential Manager entry holds "
                                  f"({CREDENTIAL_BLOB_BYTES:,} bytes as UTF-16: an RSA key is; use ed25519)")  # fmt: skip

            credential = {"Type": win32cred.CRED_TYPE_GENERIC, "TargetName": CREDENTIAL_TARGET.format(name),
                          "UserName": "clever-export", "CredentialBlob": value,
                          "Persist": win32cred.CRED_PERSIST_LOCAL_MACHINE}  # fmt: skip
            win32cred.CredWrite(credential, 0)
        else:
            make_owner_only_folders(CREDSTORE)
            self._creds("encrypt", f"--name={name}", "-", str(CREDSTORE / name), value=value)

    def read(self, name: str) -> str | None:
        """The secret, or None where the store has none of that name."""
        if not self.windows:
            return self._creds("decrypt", f"--name={name}", str(CREDSTORE / name), "-")
        from win32ctypes.pywin32 import pywintypes, win32cred

        try:
            credential = win32cred.CredRead(CREDENTIAL_TARGET.format(name), win32cred.CRED_TYPE_GENERIC)
        except pywintypes.error as error:
            if error.winerror == 1168:  # ERROR_NOT_FOUND
                return None
            raise ConfigError(f"{self.name}: {CREDENTIAL_TARGET.format(name)} cannot be read "
                              f"({foreign_text(str(error.strerror), 80)}); store it again") from None  # fmt: skip
        return (credential["CredentialBlob"] or b"").decode("utf-16-le", "replace").rstrip("\0")

    def saved(self, name: str) -> Any:
        """What the store holds under `name` now, as put_back() takes it (None: nothing)."""
        if self.windows:
            return self.read(name)
        with contextlib.suppress(FileNotFoundError):
            return (CREDSTORE / name).read_bytes()
        return None

    def put_back(self, name: str, saved: Any) -> None:
        """The store as it was before this run wrote `name`."""
        with contextlib.suppress(Exception):
            if self.windows and saved is not None:
                self.write(name, saved)
            elif self.windows:
                from win32ctypes.pywin32 import win32cred

                win32cred.CredDelete(CREDENTIAL_TARGET.format(name), win32cred.CRED_TYPE_GENERIC)
            elif saved is not None:
                (CREDSTORE / name).write_bytes(saved)
            else:
                (CREDSTORE / name).unlink()


def subprocess_run(command: list[str], stdin: str | None = None):
    import subprocess

    try:
        return subprocess.run(command, input=(stdin or "").encode("utf-8"), capture_output=True, timeout=60)
    except OSError as error:
        raise ConfigError(f"{command[0]} cannot be run ({error.strerror}); is systemd installed?") from None


def seal_secrets(options: RunOptions) -> int:
    """--seal-secrets: every secret the env file holds (and the key file D118_SFTP_KEY_FILE
    names, as D118_SFTP_KEY) moved into the sealed store, all or nothing: the env file is
    rewritten (atomically, its owner and mode kept) only after each secret reads back
    from the store, each moved line replaced by a comment naming where it went; a
    failure half-way puts the store back as it was.  Never prints a secret; a second
    run finds nothing to move."""
    path = options.settings.env_file
    if path is None:
        raise ConfigError(
            "--seal-secrets moves secrets out of the env file, and there is none; see docs/secrets.md"
        )
    if (
        path.is_symlink() or path.stat().st_nlink > 1
    ):  # rewriting the link would leave the secrets in its target
        raise ConfigError(
            f"env file {path} is a link; run --seal-secrets with --env-file naming the file itself"
        )
    store = SealedStore()
    if not store.windows and os.geteuid() != 0:
        raise ConfigError(f"--seal-secrets writes {CREDSTORE}, which only root may: run it with sudo")
    held = read_env_file(path)
    secrets = {name: value for name, value in held.items() if name in SECRETS and value.strip()}
    moved = set(secrets)
    key_file = (
        beside_script(held["D118_SFTP_KEY_FILE"].strip())
        if held.get("D118_SFTP_KEY_FILE", "").strip()
        else None
    )
    if key_file is not None:
        try:
            secrets["D118_SFTP_KEY"] = key_file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"D118_SFTP_KEY_FILE {key_file} cannot be read as an OpenSSH key "
                              f"({foreign_text(error, 80)}); fix it, then rerun") from None  # fmt: skip
        moved.add("D118_SFTP_KEY_FILE")
    if not secrets:
        print(f"{path} holds no secret: nothing to seal")
        return EXIT_OK
    before: dict[str, Any] = {}  # what each name held in the store, to put back after a failure
    try:
        for name, value in secrets.items():
            before[name] = store.saved(name)
            store.write(name, value)
            if (store.read(name) or "").rstrip("\r\n") != value.rstrip("\r\n"):
                raise ConfigError(f"{name} did not read back from the {store.name} as it was written")
        rewrite_env_file(path, moved, f"sealed in the {store.name} by --seal-secrets on {now_text()}")
    except BaseException as error:
        for name, saved in before.items():
            store.put_back(name, saved)
        reason = error if isinstance(error, ExportError) else foreign_text(error)
        raise ConfigError(f"--seal-secrets did not finish ({reason}); the {store.name} and {path} are as "
                          "they were") from None  # fmt: skip
    print(f"sealed {', '.join(secrets)} in the {store.name}; {path} no longer holds them")
    if not store.windows:
        print("add these lines to [Service] in the unit (then systemctl daemon-reload); a run outside it, "
              "such as cron's or --check by hand, cannot read them (docs/secrets.md):")  # fmt: skip
        for name in secrets:
            print(f"LoadCredentialEncrypted={name}:{CREDSTORE / name}")
    if key_file is not None:
        print(
            f"the key file {key_file} is sealed as D118_SFTP_KEY: delete it once a run under the unit succeeds"
        )
    return EXIT_OK


def rewrite_env_file(path: Path, moved: set[str], note: str) -> None:
    """The env file with each line that sets a `moved` name, as python-dotenv read it
    (quotes, `export`, a value over several lines), replaced by a comment; written
    atomically, its owner and mode kept (--seal-secrets runs as root on Linux)."""
    import dotenv.parser

    before = path.stat()
    text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    kept = [
        f"# {binding.key}: {note}\n" if binding.key in moved else binding.original.string
        for binding in dotenv.parser.parse_stream(io.StringIO(text))
    ]
    with atomic_file(path, "--env-file") as stream:
        stream.write("".join(kept))
    if os.name == "posix":
        os.chown(path, before.st_uid, before.st_gid)
        os.chmod(path, stat.S_IMODE(before.st_mode))


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, read as python-dotenv reads them (no interpolation); a
    leading UTF-8 BOM and CRLF line ends are fine, a line that is not KEY=value is named."""
    if not path.is_file():
        raise ConfigError(f"env file {path} does not exist or is not a file; check --env-file")
    refuse_if_shared(path, f"env file {path}")
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise ConfigError(f"env file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as error:
        raise unusable(f"cannot read the env file {path}", path, error, "--env-file") from None
    for number, line in enumerate(text.splitlines(), 1):
        if "\ufeff" in line:  # two files pasted together: the second one's BOM
            raise ConfigError(
                f"env file {path}: line {number} holds a byte-order mark (two files pasted together?); remove it"
            )
    import dotenv.parser

    values: dict[str, str] = {}
    for binding in dotenv.parser.parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f"env file {path}: line {binding.original.line} is not KEY=value; "
                "fix it (see clever_export.env.example)"
            )
        if binding.key is None or binding.value is None:  # a comment, a blank line, a bare KEY
            continue
        if binding.key in REPEATABLE_SETTINGS and values.get(binding.key):
            values[binding.key] += " " + binding.value  # each line adds a target
        else:
            values[binding.key] = binding.value
    return values


REPEATABLE_SETTINGS = frozenset({"CLEVER_NOTIFY"})


def refuse_if_shared(path: Path, what: str) -> None:
    """A file holding secrets must be the account's alone, as OpenSSH insists (Linux/macOS)."""
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise ConfigError(f"{what} is readable by other users, so it is refused; run: chmod 600 {path}")


class Mode(enum.Enum):
    """What a run does, decided once from the command line (mode_of): each mode is
    the flag that chooses it, in the order they win.  Those before --dry-run
    exclude each other (--demo too: with --dry-run or --no-upload it reads the
    sample data in that mode); those from --dry-run on export under the lock, and
    ping and alert on their outcome.  Only the nightly run uploads, is guarded
    and is recorded for --status."""

    DEMO_DB = "--demo-db"
    CHECK = "--check"
    SHOW_HOST_KEY = "--show-host-key"
    STATUS = "--status"
    NOTIFY_TEST = "--notify-test"
    SEAL_SECRETS = "--seal-secrets"
    DRY_RUN = "--dry-run"
    NO_UPLOAD = "--no-upload"
    DEMO = "--demo"
    NIGHTLY = ""

    def given(self, args: argparse.Namespace) -> bool:
        return not self.value or getattr(args, self.name.lower()) not in (None, False)

    @property
    def exports(self) -> bool:
        return self in (Mode.DRY_RUN, Mode.NO_UPLOAD, Mode.DEMO, Mode.NIGHTLY)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Flags, env file and profile, resolved once (resolve_options): what one run does."""

    mode: Mode
    profile: Profile  # with command-line overrides applied
    settings: Settings  # connection settings: the env file and the process environment
    source: str  # "oracle", "sqlite" or "demo"
    sqlite_path: Path | None
    output_path: Path
    known_hosts_path: Path
    state_path: Path
    lock_path: Path
    log_path: Path
    changed_only: bool
    force: bool
    max_drop_percent: float
    timeout: float
    retry: RetryPolicy
    import_deadline_hours: float  # 0: no import check
    import_tolerance_percent: float
    ping_url: str | None
    notify_success: bool
    verbose: bool
    quiet: bool

    @property
    def sent_copy_path(self) -> Path:
        """The last upload, kept beside the state file for the import check."""
        return self.state_path.parent / SENT_FILE_NAME


def _require_env(environ: dict[str, str], name: str) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"environment variable {name} ({SETTINGS[name][0]}) is not set{sealed_hint(name)}; "
            "set it in the env file (clever_export.env, or --env-file) or for the account that runs "
            "the job (see README, Configuration)"
        )
    return value


def database_settings(environ: dict[str, str]) -> DatabaseSettings:
    user, password, dsn = (
        _require_env(environ, name)
        for name in ("POWERSCHOOL_READ_USER", "POWERSCHOOL_DB_PASSWORD", "POWERSCHOOL_PROD_DB")
    )
    register_secret(password)
    if "@" in dsn:  # user/password@host, user:password@host: never shown
        credentials = dsn.rpartition("@")[0]
        register_secret(re.split(r"[/:]", credentials, maxsplit=1)[-1])
        raise ConfigError(
            "POWERSCHOOL_PROD_DB holds a user/password@ part; give only host:port/service (or an alias) "
            "there, and the password in POWERSCHOOL_DB_PASSWORD"
        )
    tns_admin = environ.get("TNS_ADMIN", "").strip()
    client = environ.get("ORACLE_CLIENT_LIB_DIR", "").strip()
    if client and not beside_script(client).is_dir():
        raise ConfigError(
            f"ORACLE_CLIENT_LIB_DIR {beside_script(client)} is not a folder; point it at the unzipped "
            "Oracle Instant Client (see docs/oracle.md), or unset it for thin mode"
        )
    return DatabaseSettings(
        user,
        Secret(password),
        dsn,
        beside_script(tns_admin) if tns_admin else None,
        beside_script(client) if client else None,
    )


def sftp_settings(
    environ: dict[str, str], known_hosts_path: Path, timeout: float, need_login: bool = True
) -> SftpSettings:
    host = _require_env(environ, "D118_SFTP_ADDRESS")
    if re.fullmatch(r"[^:]+:[0-9]+", host):
        raise ConfigError(
            "D118_SFTP_ADDRESS holds a port; give the host alone there and the port in D118_SFTP_PORT"
        )
    try:
        host.encode("idna")
    except UnicodeError:  # an empty label (sftp..district.org), a label over 63 letters
        raise ConfigError(
            f"D118_SFTP_ADDRESS {escape_text(host)[:80]!r} is not a valid host name or address; check it"
        ) from None
    port_text = environ.get("D118_SFTP_PORT", "").strip() or "22"
    if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII) or not 0 < int(port_text) < 65536:
        raise ConfigError(f"D118_SFTP_PORT must be a port number 1-65535, not {escape_text(port_text)!r}")
    if not need_login:
        return SftpSettings(host, int(port_text), "", None, None, None, known_hosts_path, timeout)
    username = _require_env(environ, "D118_SFTP_USERNAME")
    password = environ.get("D118_SFTP_PASSWORD") or None
    passphrase = environ.get("D118_SFTP_KEY_PASSPHRASE") or None
    key_text = environ.get("D118_SFTP_KEY_FILE", "").strip()
    key_file = beside_script(key_text) if key_text else None
    key = environ.get("D118_SFTP_KEY") if key_file is None else None
    for secret in (password, passphrase, key):
        register_secret(secret)
    if key_file is None and password is None and key is None:
        raise ConfigError(
            "neither D118_SFTP_PASSWORD nor D118_SFTP_KEY_FILE is set; set one so the script can log in "
            f"to the SFTP server{sealed_hint('D118_SFTP_PASSWORD', 'D118_SFTP_KEY')}"
        )
    return SftpSettings(
        host,
        int(port_text),
        username,
        Secret(password) if password else None,
        key_file,
        Secret(passphrase) if passphrase else None,
        known_hosts_path,
        timeout,
        Secret(key) if key else None,
    )


def beside_script(path_text: str | Path) -> Path:
    """Relative paths resolve beside the script, never the working directory."""
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else SCRIPT_DIR / path


# --- Secrets never reach a log line ------------------------------------------

# Passwords travel as Secret and are revealed only to the driver.  Text from
# outside (a database's or server's message, an exception) may still echo one,
# so that text, and only that text, is redacted where it enters a message:
# as a whole token, so the script's own words ("export started" with the
# password "export") are never mangled, and a short password is not revealed
# by the gaps it would leave in every word that contains it.
_SECRETS: set[str] = set()  # this run's; main() clears it at the start of every run


def register_secret(value: str | None) -> None:
    if value:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Every registered secret in `text`, standing as a whole token, becomes ***."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", "***", text)
    return text


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


WITHHELD = "(the message is withheld: it held a password)"


def foreign_text(error: BaseException | str, limit: int = 300) -> str:
    """Outside text (an exception, a server's words) made fit for a message: the
    first line, control characters escaped, shortened; withheld whole if a secret
    stands in it (masking only that word in a standard message would show it)."""
    text = error if isinstance(error, str) else _first_line(error)
    if redact(text) != text:
        return WITHHELD
    text = escape_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RedactTracebacks(logging.Filter):
    """A traceback in the log is outside text too: redacted the same way."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text:  # formatters reuse exc_text
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


# --- Every wait has an end ------------------------------------------------------

STOP_SECONDS = 10.0  # a stopped run ends within this, whatever it was waiting on (docs/running.md)
STOP_GRACE_SECONDS = 2.0  # a call under way when the stop comes may finish within this; then it is cut
DEFERRED_SECONDS = 6.0  # a rename on the server, once sent, may finish within this after a stop
REPORTS_END_SECONDS = (
    8.0  # after a stop, the alerts and the ping share the time up to this (2 s left to exit)
)
CLOSE_SECONDS = 2.0  # closing a connection: a peer that stalls is left behind
CANCEL_WAIT_SECONDS = 1.0  # a call cut short ends (a query interrupted on the database) within this
POLL_SECONDS = 0.05


class Terminated(BaseException):
    """SIGTERM or SIGINT, acted on at a safe point (a BaseException: no handler swallows it)."""

    def __init__(self, signum: int, uploaded: bool | None = False):
        super().__init__(signum)
        self.signum, self.uploaded = signum, uploaded  # None: cut in the rename on the server


class StopRequest:
    """SIGTERM and SIGINT only record the request; the run stops at its next safe
    point (check), and a call to a service under way is cut by bounded(), so a
    stopped run ends within STOP_SECONDS.  A rename on the server (deferred) is
    given DEFERRED_SECONDS to finish, and the alerts and the ping what is left."""

    def __init__(self):
        self.signum: int | None = None
        self.at = math.inf  # when the stop came (time.monotonic)
        self.deferred = 0
        self.wake = threading.Event()  # set by a signal: ends a wait between retries

    def request(self, signum: int, frame=None) -> None:
        if self.signum is not None:  # the first one counts; a second changes nothing
            return
        self.signum, self.at = signum, time.monotonic()
        self.wake.set()

    def check(self, uploaded: bool = False) -> None:
        """A safe point: raise Terminated if a stop was asked for (and nothing is deferred)."""
        if self.signum is not None and not self.deferred:
            raise Terminated(self.signum, uploaded)

    def cut_at(self, stoppable: bool) -> float:
        """When a call under way is cut short by the stop (never, without one)."""
        if not stoppable:  # an alert or a ping: what is left of STOP_SECONDS
            return self.at + REPORTS_END_SECONDS
        return self.at + (DEFERRED_SECONDS if self.deferred else STOP_GRACE_SECONDS)

    @contextlib.contextmanager
    def deferred_section(self) -> Iterator[None]:
        """Work that must finish once started (the swap on the server, its cleanup)."""
        self.deferred += 1
        try:
            yield
        finally:
            self.deferred -= 1

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT recorded for this call of main(), then the old handlers back."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.signal(signum, self.request) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


STOP = StopRequest()  # main() starts each run with a new one


def bounded(
    call: Callable[[], Any],
    what: str,
    seconds: float,
    failure: type[Exception] = TimeoutError,
    cancel: Callable[[], Any] | None = None,
    fix: str = "",
    stoppable: bool = True,
) -> Any:
    """call() on a worker thread, waited for until it ends, `seconds` pass or a stop cuts it.

    The one timer of the script: every call to the database, the SFTP server,
    an alert target or the ping goes through it.  The deadline is wall-clock
    time, so a peer that trickles a byte at a time is cut like one that never
    answers: cancel() frees the worker (a socket shut, a query cancelled on
    the database), or the worker is left behind (a daemon thread).  After a
    stop nothing new starts, and a call under way gets STOP_GRACE_SECONDS;
    stoppable=False (an alert, a ping) is not cut by the stop but shares what
    is left of STOP_SECONDS.
    """
    if stoppable:
        STOP.check()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the waiting thread below
            outcome["error"] = error

    worker = threading.Thread(target=work, name=f"bounded: {what[:40]}", daemon=True)
    started = time.monotonic()
    worker.start()
    while worker.is_alive():
        now, end = time.monotonic(), min(started + seconds, STOP.cut_at(stoppable))
        if now < end:
            worker.join(min(POLL_SECONDS, end - now))
            continue
        if cancel is not None:
            with contextlib.suppress(Exception):
                cancel()
            worker.join(CANCEL_WAIT_SECONDS)  # a cancelled call ends before its connection is touched again
        if now < started + seconds:  # the stop's cut, not the deadline
            if stoppable:
                raise Terminated(STOP.signum)
            raise failure(f"{what} was cut short by the stop")
        raise failure(f"{what} did not finish within {seconds:g} seconds{fix and '; ' + fix}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def together(*calls: Callable[[], Any]) -> None:
    """Calls that each end by their own deadline (bounded), made at once: the
    alerts and the ping take as long as the slowest of them, not their sum."""

    def guarded(call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception:  # a bug in a report: the log has it, the run's one line stays one
            FILE_LOG.exception("a report failed")

    workers = [threading.Thread(target=guarded, args=(call,), daemon=True) for call in calls]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


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

# What the profile's query must return, by name, whatever it writes.
QUERY_COLUMNS_ALWAYS = ("dcid", "student_number", "first_name", "last_name")


def query_inputs(profile: Profile) -> tuple[str, ...]:
    """The columns the profile's query must return for the fields it writes."""
    columns = [*QUERY_COLUMNS_ALWAYS, *(name for name in profile.inputs() if name != RACE_CODES)]
    if profile.enroll_statuses is not None:
        columns.append("enroll_status")  # the statement keeps students.enroll_statuses
    if profile.uses_studentrace():
        columns.append("id")  # STUDENTS.ID, for the STUDENTRACE join
    return tuple(columns)


def check_query_inputs(profile: Profile, source: str = "config") -> None:
    """Before anything runs: the profile's query names every column it must return."""
    query_words = set(re.findall(r"[a-z_][a-z0-9_$#]*", profile.query.lower()))
    for column in query_inputs(profile):
        if column not in query_words:
            raise ConfigError(
                f"{source}: students.query does not return the column {column}; "
                f"it must return {', '.join(query_inputs(profile))}"
            )
    uncommented = re.sub(r"--[^\n]*|/\*.*?\*/", " ", profile.query, flags=re.DOTALL)
    if profile.enroll_statuses is None and not re.search(r"\bwhere\b", uncommented, re.IGNORECASE):
        raise ConfigError(
            f"{source}: students.query has no WHERE and students.enroll_statuses is not set, so every "
            "student ever enrolled would be exported; add enroll_statuses = [0] under [students] "
            "(as the examples do), or a WHERE of your own"
        )


@dataclasses.dataclass(frozen=True)
class ExportStatement:
    """The one statement a run executes, and what each row it returns holds."""

    sql: str
    columns: tuple[str, ...]  # the row's fields, in order
    compares: bool  # rows carry PowerSchool's current values (current_<field>)


def export_statement(profile: Profile, with_current_values: bool) -> ExportStatement:
    """The profile's query wrapped with what this run needs, portable to Oracle,
    PostgreSQL and SQLite: no AS before aliases, no vendor functions.

    Columns are selected by name, so the wrapper owns the row's shape; test
    students are flagged by the database (first or last name in the exclude
    list), so names never reach Python and an undecodable name cannot stop
    the night.  STUDENTRACE is joined row by row (one row per race) and the
    current custom values grouped per student.  Ordered by student_number,
    so all rows of one student arrive together.
    """
    columns = ["dcid", "student_number", "test_name"]
    select = ["q.dcid", "q.student_number", f"{_test_name_flag(profile.exclude_names)} test_name"]
    for column in profile.inputs():
        columns.append(column)
        select.append("r.racecd race_code" if column == RACE_CODES else f"q.{column}")
    joins = []
    if profile.uses_studentrace():
        joins.append("LEFT JOIN studentrace r ON r.studentid = q.id")
    if with_current_values:
        # Grouped with MAX: these are only compared with (never written), and a
        # custom table with two rows for a student just reads as "changed".
        table, key = profile.current_table, profile.current_key
        current = {f"current_{field.lower()}": custom for field, custom in profile.current_fields().items()}
        columns += current
        select += [f"c.{name}" for name in current]
        joins.append(
            f"LEFT JOIN (SELECT {key}, {', '.join(f'MAX({custom}) {name}' for name, custom in current.items())}\n"
            f"           FROM {table} GROUP BY {key}) c\n"
            f"       ON c.{key} = q.dcid"
        )
    sql = "\n".join(
        [
            f"SELECT {', '.join(select)}",
            f"FROM (\n{strip_statement_end(profile.query)}\n) q",
            *joins,
            *(
                [f"WHERE q.enroll_status IN ({', '.join(profile.enroll_statuses)})"]
                if profile.enroll_statuses
                else []
            ),
            "ORDER BY q.student_number",
        ]
    )
    return ExportStatement(sql, tuple(columns), with_current_values)


def _test_name_flag(exclude_names: Iterable[str]) -> str:
    names = sorted({name.strip().upper() for name in exclude_names if name.strip()})
    if not names:
        return "0"
    listed = ", ".join("'" + name.replace("'", "''") + "'" for name in names)
    return (
        f"CASE WHEN UPPER(TRIM(q.first_name)) IN ({listed}) "
        f"OR UPPER(TRIM(q.last_name)) IN ({listed}) THEN 1 ELSE 0 END"
    )


def strip_statement_end(query: str) -> str:
    """The query without a trailing ';' or '-- comment', so it can be wrapped."""
    lines = query.rstrip().splitlines()
    while lines:
        last = lines[-1].rstrip()
        comment_at = _line_comment_at(last)
        if comment_at is not None:
            last = last[:comment_at].rstrip()
        last = last.rstrip().rstrip(";").rstrip()
        if last:
            lines[-1] = last
            break
        lines.pop()
    return "\n".join(lines)


def _line_comment_at(line: str) -> int | None:
    """Where a '--' comment starts on the line, outside quoted text; None if none."""
    quoted = False
    for at, character in enumerate(line):
        if character == "'":
            quoted = not quoted
        elif not quoted and line.startswith("--", at):
            return at
    return None


def probe_statement(sql: str) -> str:
    """The statement wrapped so the database checks it fully but returns no rows."""
    return f"SELECT * FROM (\n{strip_statement_end(sql)}\n) probe WHERE 1 = 0"


# Thin mode cannot talk to these databases; thick mode (Instant Client) can.
THICK_MODE_ERRORS = {
    "DPY-3001": "requires Oracle Native Network Encryption or checksumming",
    "DPY-3010": "is older than Oracle 12.1",
    "DPY-3015": "still uses old (10G) password verifiers",
}


def connect_oracle(settings: DatabaseSettings, timeout: float):
    """A connection (thin mode, or thick with ORACLE_CLIENT_LIB_DIR), or
    DatabaseError within about `timeout` seconds."""
    try:
        import oracledb
    except ImportError:
        raise ConfigError(
            "python-oracledb is not installed; run: python -m pip install -r requirements.txt"
        ) from None
    config_dir = oracle_config_dir(settings.tns_admin)
    if settings.client_lib_dir is not None and oracledb.is_thin_mode():
        try:
            oracledb.init_oracle_client(lib_dir=str(settings.client_lib_dir), config_dir=config_dir)
        except Exception as error:
            raise ConfigError(
                f"ORACLE_CLIENT_LIB_DIR {settings.client_lib_dir}: Oracle Instant Client cannot be loaded "
                f"({database_message(error)}); install Instant Client (Basic or Basic Light) there, or "
                "unset the variable for thin mode (see docs/oracle.md)"
            ) from None
    where = describe_dsn(settings, oracledb)
    # python-oracledb's tcp_connect_timeout covers only the TCP handshake; a
    # listener that accepts and then says nothing would hang connect() forever.
    try:
        connection = bounded(
            lambda: oracledb.connect(
                user=settings.user,
                password=settings.password.reveal(),
                dsn=settings.dsn,
                config_dir=config_dir if oracledb.is_thin_mode() else None,
                tcp_connect_timeout=timeout,
                retry_count=0,
            ),
            f"the connection to database {where}", timeout, DatabaseError,
            fix="check POWERSCHOOL_PROD_DB and that the database is up",
        )  # fmt: skip
    except ExportError:
        raise  # bounded's own: the deadline, named
    except Exception as error:
        raise connect_failure(where, error) from None
    connection.call_timeout = int(timeout * 1000)  # each round trip, in ms
    connection.outputtypehandler = _replace_undecodable_text
    return connection


def connect_failure(where: str, error: BaseException) -> DatabaseError:
    """The one line for a failed connect: the driver's codes and causes, and the fix."""
    message = database_message(error)
    for code, reason in THICK_MODE_ERRORS.items():
        if code in message:
            return DatabaseError(
                f"database {where} {reason}, which thin mode cannot do ({message}); this database "
                "needs thick mode: install Oracle Instant Client and set ORACLE_CLIENT_LIB_DIR "
                "or --oracle-client to its folder (see docs/oracle.md)"
            )
    return DatabaseError(
        f"cannot connect to database {where}: {message}; "
        "check POWERSCHOOL_PROD_DB, POWERSCHOOL_READ_USER and POWERSCHOOL_DB_PASSWORD"
    )


_BOMLESS_COPIES: dict[Path, tempfile.TemporaryDirectory] = {}


def oracle_config_dir(tns_admin: Path | None) -> str | None:
    """TNS_ADMIN as the driver can read it.  Notepad's UTF-8 starts tnsnames.ora
    with a byte-order mark, which the driver takes for part of the first alias:
    then the folder's .ora files are read from a private copy without it (the
    admin's files are never changed)."""
    if tns_admin is None:
        return None
    files = sorted(tns_admin.glob("*.ora")) if tns_admin.is_dir() else []
    with contextlib.suppress(OSError):
        if not any(path.read_bytes()[:3] == b"\xef\xbb\xbf" for path in files):
            return str(tns_admin)
    if tns_admin not in _BOMLESS_COPIES:
        copy = _BOMLESS_COPIES[tns_admin] = tempfile.TemporaryDirectory(prefix="clever_export_tns_")
        for path in files:
            with contextlib.suppress(OSError):
                (Path(copy.name) / path.name).write_bytes(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    return _BOMLESS_COPIES[tns_admin].name


def describe_dsn(settings: DatabaseSettings, oracledb) -> str:
    """The connect string, and for a tnsnames.ora alias the host and port it names."""
    if not _TNS_ALIAS.fullmatch(settings.dsn):
        return redact(settings.dsn)
    folder = settings.tns_admin or "TNS_ADMIN (not set)"
    try:
        params = oracledb.ConnectParams(config_dir=oracle_config_dir(settings.tns_admin))
        params.parse_connect_string(settings.dsn)
    except Exception as error:
        if "." in settings.dsn:  # a bare host name, not an alias
            return settings.dsn
        fix = (
            "add it to tnsnames.ora there or set TNS_ADMIN to the right folder"
            if settings.tns_admin
            else "set TNS_ADMIN to the folder holding tnsnames.ora, or use host:port/service"
        )
        raise DatabaseError(
            f"POWERSCHOOL_PROD_DB alias {settings.dsn} cannot be resolved from {folder} "
            f"({database_message(error)}); {fix}"
        ) from None
    return f"{settings.dsn} ({params.host}:{params.port}/{params.service_name or params.sid} from {folder})"


_TNS_ALIAS = re.compile(r"[A-Za-z][A-Za-z0-9_.$#-]*")


def _replace_undecodable_text(cursor, metadata):
    """Text the database's character set cannot decode arrives with U+FFFD, not an error."""
    import oracledb

    if metadata.type_code in (
        oracledb.DB_TYPE_VARCHAR,
        oracledb.DB_TYPE_CHAR,
        oracledb.DB_TYPE_NVARCHAR,
        oracledb.DB_TYPE_LONG,
    ):
        return cursor.var(metadata.type_code, arraysize=cursor.arraysize, encoding_errors="replace")
    return None


def connect_sqlite(path: Path):
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"SQLite file {path} {what}; check --sqlite (relative paths are beside the script)")
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as error:
        raise DatabaseError(f"cannot open SQLite file {path}: {error}") from None
    connection.text_factory = _decode_replacing
    return connection


def _decode_replacing(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def connect_demo():
    """An in-memory database seeded from the readable sample in demo/."""
    seed_path = beside_script(DEMO_SEED_FILE)
    try:
        seed = seed_path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"demo data {seed_path} cannot be read ({error.strerror}); "
            "--demo needs the demo/ folder from the repository beside the script"
        ) from None
    connection = sqlite3.connect(":memory:", check_same_thread=False)  # queried from bounded()'s worker
    connection.executescript(seed)
    return connection


class Database:
    """The source's connection: every statement and fetch ends by --timeout
    (bounded), and one cut short is cancelled on the database (Oracle's and
    PostgreSQL's cancel(), SQLite's interrupt())."""

    def __init__(self, connection, timeout: float):
        self.connection, self.timeout = connection, timeout

    def call(self, action: Callable[[], Any], what: str, failure: str) -> Any:
        """One call; the database's own error becomes `failure` with its message."""
        try:
            fix = "check the database's load, or raise --timeout"
            return bounded(action, what, self.timeout, DatabaseError, self.cancel, fix)
        except ExportError:
            raise
        except Exception as error:
            raise DatabaseError(failure.format(database_message(error))) from None

    def run(self, sql: str, what: str, failure: str, fetch_all: bool = False):
        """A cursor with `sql` executed (its rows fetched, for a probe), closed if that fails."""
        cursor = self.connection.cursor()
        cursor.arraysize = FETCH_ARRAYSIZE
        if hasattr(cursor, "prefetchrows"):  # oracledb; sqlite3 has no such thing
            cursor.prefetchrows = FETCH_ARRAYSIZE
        try:
            self.call(lambda: (cursor.execute(sql), fetch_all and cursor.fetchall()), what, failure)
        except BaseException:
            close_quietly(cursor)
            raise
        return cursor

    def cancel(self) -> None:
        (getattr(self.connection, "cancel", None) or self.connection.interrupt)()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            bounded(self.connection.close, "closing the database connection", CLOSE_SECONDS, stoppable=False)


def close_quietly(cursor) -> None:
    with contextlib.suppress(Exception):  # a cursor a cut call left behind
        cursor.close()


def stream_batches(database: Database, statement: ExportStatement) -> Iterator[list[tuple]]:
    """Execute the statement once; return an iterator over its rows in batches
    of FETCH_ARRAYSIZE (the caller loops over each batch: no layer per row)."""
    cursor = database.run(
        statement.sql, "the export query", "the export query failed: {}; check students.query in your "
        "profile (or the built-in one) and the account's read access to its tables",
    )  # fmt: skip
    return _fetch_batches(database, cursor)


def _fetch_batches(database: Database, cursor) -> Iterator[list[tuple]]:
    try:
        while batch := database.call(
            lambda: cursor.fetchmany(FETCH_ARRAYSIZE), "reading the query's rows",
            "reading the export query's rows failed: {}",
        ):  # fmt: skip
            yield batch
    finally:
        close_quietly(cursor)


def probe_table(database: Database, table: str) -> None:
    """Prove a table readable (for --check) without reading a row."""
    close_quietly(database.run(f"SELECT * FROM {table} WHERE 1 = 0", f"reading {table}",
                               f"cannot read {table}: {{}}; grant SELECT to the read user"))  # fmt: skip


def probe_query(database: Database, sql: str, mode: str) -> None:
    """Have the database parse and plan `sql` fully, returning no rows (for --check)."""
    close_quietly(
        database.run(probe_statement(sql), f"the {mode} query", f"the {mode} query fails: {{}}", True)
    )


def database_message(error: BaseException, limit: int = 300) -> str:
    """A driver's message on one line, with its causes (DPY-6005 ... Connection refused)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for line in str(current).splitlines():
            line = line.strip()
            if line and line not in parts and not line.startswith("Help:"):
                parts.append(line)
        current = current.__cause__ or current.__context__
    return foreign_text(" ".join(parts) or type(error).__name__, limit)


# =============================================================================
# Mapping: pure functions from a student's rows to Clever's values
# =============================================================================

# Plain text rules, never a numeric parser (Decimal('1e99999999') hangs):
# trimmed; an integral decimal written with digits and an optional ".0..."
# reads as that integer.  Longer digit strings than any real code stay text.
_INTEGRAL_CODE = re.compile(r"-?[0-9]{1,30}(?:\.0*)?", re.ASCII)
_STUDENT_NUMBER = re.compile(r"[0-9]{1,30}(?:\.0*)?", re.ASCII)
REASON_CODE_LENGTH = 40  # a code longer than this is shortened in reasons


def code_text(value: Any) -> str | None:
    """A code as text: 16, 16.0, " 16 ", "16.0" and Decimal('16') all become "16".

    None, empty and whitespace give None (Oracle cannot tell '' from NULL);
    anything else is kept, trimmed, and will read as an unknown code.
    """
    if value is None:
        return None
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is bool:
        return str(int(value))
    if kind is float:
        if value.is_integer() and abs(value) < 1e18:
            return str(int(value))
        return repr(value)
    text = value.strip() if kind is str else str(value).strip()
    if not text:
        return None
    if _INTEGRAL_CODE.fullmatch(text):
        return str(int(text.partition(".")[0]))
    return text


def student_number_text(value: Any) -> str | None:
    """student_number as ASCII digits (" 1013 ", 1013.0 -> "1013"); None if it is not one."""
    kind = type(value)
    if kind is int:
        return str(value) if value >= 0 else None
    if kind is float:
        return str(int(value)) if value.is_integer() and 0 <= value < 1e18 else None
    if value is None or kind is bool:
        return None
    text = str(value).strip()
    if _STUDENT_NUMBER.fullmatch(text):
        return str(int(text.partition(".")[0]))
    return None


def shown_code(code: str) -> str:
    """A code as a reason shows it: one line, not too long."""
    text = escape_text(code)
    return text if len(text) <= REASON_CODE_LENGTH else text[: REASON_CODE_LENGTH - 3] + "..."


class Letter(NamedTuple):
    value: str  # what Clever receives
    reason: str  # why a value is blank (empty when it is not)


class _Conflicting:
    """A student's rows hold different values for one column."""

    def __repr__(self) -> str:
        return "CONFLICTING"


CONFLICTING = _Conflicting()
CONFLICT_REASON = "conflicting rows"
Letters = tuple[Letter, ...]  # one per value field the profile writes, in file order


def merged_code(values: Iterable[Any]) -> str | _Conflicting | None:
    """One column of a student's rows: the code they agree on, or CONFLICTING."""
    codes = {code_text(value) for value in values}
    if len(codes) > 1:
        return CONFLICTING
    return codes.pop() if codes else None


def _code(value: Any) -> str | _Conflicting | None:
    return value if value is CONFLICTING else code_text(value)


# FEDETHNICITY codes that are answers, but not Yes or No: blank, with what they mean.
HISPANIC_BLANK_REASONS = {"-1": "unanswered (-1)", "2": "declined to specify (2)"}


def hispanic_letter(fedethnicity: Any, profile: Profile) -> Letter:
    code = _code(fedethnicity)
    if code is CONFLICTING:
        return Letter("", CONFLICT_REASON)
    if code in profile.hispanic_yes:
        return Letter("Y", "")
    if code in profile.hispanic_no:
        return Letter("N", "")
    if code is None:
        return Letter("", "no value")
    if code in HISPANIC_BLANK_REASONS:
        return Letter("", HISPANIC_BLANK_REASONS[code])
    return Letter("", f"unknown code {shown_code(code)}")


def ell_letter(lep: Any, profile: Profile) -> Letter:
    """NULL or no row is PowerSchool's unchecked box: N.  An unknown value is not."""
    code = _code(lep)
    if code is CONFLICTING:
        return Letter("", CONFLICT_REASON)
    if code is None or code in profile.ell_no:
        return Letter("N", "")
    if code in profile.ell_yes:
        return Letter("Y", "")
    return Letter("", f"unknown LEP code {shown_code(code)}")


def studentrace_letter(race_codes: Iterable[Any], profile: Profile) -> Letter:
    """Race from the student's STUDENTRACE codes: two or more different races give M."""
    letters: set[str] = set()
    unknown: set[str] = set()
    blanked: set[str] = set()
    for raw in race_codes:
        code = code_text(raw)
        if code is None:
            continue
        letter = profile.studentrace_codes.get(code)
        if letter is None:
            unknown.add(code)
        elif letter:
            letters.add(letter)
        else:
            blanked.add(code)
    if len(letters) >= 2:
        return Letter("M", "")
    if unknown:
        return Letter("", f"unknown RACECD {shown_code(min(unknown))}")
    if letters:
        return Letter(letters.pop(), "")
    if blanked:
        return Letter("", f"RACECD {shown_code(min(blanked))} maps to blank")
    return Letter("", "no STUDENTRACE row")


def race_letter(state_race: Any, race_codes: Iterable[Any], profile: Profile) -> Letter:
    if profile.race_source == "studentrace":
        return studentrace_letter(race_codes, profile)
    code = _code(state_race)
    if code is CONFLICTING:
        return Letter("", CONFLICT_REASON)
    if code in profile.state_codes_without_race:
        if profile.studentrace_codes:
            return studentrace_letter(race_codes, profile)
        return Letter("", f"state code {code} carries no race (add race.studentrace_codes)")
    if code is None:
        return Letter("", "no value")
    letter = profile.state_codes.get(code)
    if letter is None:
        return Letter("", f"unknown code {shown_code(code)}")
    return Letter(letter, "" if letter else f"code {code} maps to blank")


class ValueField(NamedTuple):
    """One of the file's value columns: what it reads and how it becomes a letter."""

    inputs: tuple[str, ...]  # the statement's columns it reads (race_code: one per STUDENTRACE row)
    letter: Callable[[dict[str, Any], Profile], Letter]  # merged codes -> Clever's value
    current: str  # the Profile key naming the custom field the import fills


# The one table of value fields, in the file's default order.
VALUE_FIELDS: dict[str, ValueField] = {
    "Hispanic_Latino": ValueField(
        ("fedethnicity",), lambda codes, profile: hispanic_letter(codes["fedethnicity"], profile),
        "current_hispanic",
    ),
    "Race": ValueField(
        ("state_race", "race_code"),
        lambda codes, profile: race_letter(codes.get("state_race"), codes.get("race_code", ()), profile),
        "current_race",
    ),
    "ELL": ValueField(("lep",), lambda codes, profile: ell_letter(codes["lep"], profile), "current_ell"),
}  # fmt: skip
RACE_CODES = "race_code"  # the one input read as a list (a student's races), never merged


def output_line(number: str, values: Iterable[str], columns: Iterable[str]) -> str:
    """One line of the file, without its LF; `values` in the columns' order, student_number left out."""
    given = iter(values)
    return "\t".join(number if column == "student_number" else next(given) for column in columns)


def current_text(now: Any) -> str:
    """PowerSchool's current custom value as the file would carry it."""
    return "" if now is None else str(now).strip()


def changed_fields(letters: Letters, current: Iterable[Any], fields: Iterable[str]) -> tuple[str, ...]:
    """Each field whose new value differs from what PowerSchool holds now."""
    changes = []
    for field, letter, now in zip(fields, letters, current, strict=True):
        now_text = current_text(now)
        if now_text != letter.value:
            changes.append(f"{field} {escape_text(now_text) or '(blank)'} \u2192 {letter.value or '(blank)'}")
    return tuple(changes)


SKIP_NO_NUMBER = "no numeric student_number"
SKIP_TEST_NAME = "test-student name"
SKIP_DUPLICATE = "duplicate student_number with different values"
SKIP_FORMS = "student_number stored in different forms"


class _Combination:
    """One memoised combination of raw codes: letters, line parts, students counted."""

    __slots__ = ("after", "before", "letters", "students")

    def __init__(self, letters: Letters, before: str, after: str):
        self.letters, self.before, self.after, self.students = letters, before, after, 0


class Student(NamedTuple):
    """A student who gets a line (before --changed-only decides)."""

    number: str
    letters: Letters
    before: str  # the line is before + number + after
    after: str
    row: tuple  # a row of the student's, for the current values


class StudentMapper:
    """Turns the export statement's rows into students and counts. Pure: no I/O.

    Rows arrive ordered by student_number, so a student's rows (a second
    extension row, one row per STUDENTRACE race, a second enrolment under the
    same number) are neighbours.  The usual student is one row: its letters
    and line parts are memoised by the row's raw codes, so a million students
    cost a million dictionary look-ups, not a million parses.  The memo is
    bounded: data where every code differs costs parsing time, never memory.
    """

    MEMO_LIMIT = 4096

    def __init__(self, profile: Profile, statement: ExportStatement, summary: Summary):
        self.profile = profile
        self.summary = summary
        self.fields = profile.value_fields()
        self.compares = statement.compares
        at = {name: i for i, name in enumerate(statement.columns)}
        self.number_at, self.dcid_at, self.test_at = at["student_number"], at["dcid"], at["test_name"]
        self._inputs = tuple(name for name in statement.columns if name in _ALL_INPUTS)
        self._input_at = tuple(at[name] for name in self._inputs)
        self.codes_of = _tuple_getter(list(self._input_at))
        self._rules = tuple(VALUE_FIELDS[field].letter for field in self.fields)
        current_at = [at[f"current_{field.lower()}"] for field in self.fields] if self.compares else []
        self.current_of = _tuple_getter(current_at)
        self.memo: dict[tuple, _Combination] = {}  # raw codes -> letters, line parts, students counted
        self._parts: dict[tuple[str, ...], tuple[str, str]] = {}
        self.skips: list[Skip] = []  # since the caller last logged them
        self.seen_numbers = array.array("q")  # every student's number, for numbers stored in several forms
        self.big_numbers: list[int] = []  # those too large for the array
        self.in_order = True  # numbers rose strictly, so every duplicate was a neighbour
        self.last = -1  # the last number remembered
        self.import_check: ImportCheck | None = None  # set by the run when it checks the last import

    def letters_of(self, codes: dict[str, Any]) -> Letters:
        return tuple(rule(codes, self.profile) for rule in self._rules)

    def combination(self, row: tuple) -> _Combination:
        """Letters and line parts for a student who is one row (memoised)."""
        codes = self.codes_of(row)
        found = self.memo.get(codes)
        if found is None:
            if len(self.memo) >= self.MEMO_LIMIT:
                self.fold_counts()
                self.memo.clear()
            named = dict(zip(self._inputs, codes, strict=True))
            if RACE_CODES in named:
                named[RACE_CODES] = (named[RACE_CODES],)
            letters = self.letters_of(named)
            found = self.memo[codes] = _Combination(letters, *self.line_parts(letters))
        return found

    def fold_counts(self) -> None:
        """Move the memo's student counts into the summary."""
        for combination in self.memo.values():
            if combination.students:
                self.summary.add(combination.letters, combination.students)
                combination.students = 0

    def letters_of_rows(self, rows: list[tuple]) -> Letters:
        """One student's several rows: each column merged; disagreement gives blank."""
        return self.letters_of(
            {
                name: [row[at] for row in rows]
                if name == RACE_CODES
                else merged_code(row[at] for row in rows)
                for name, at in zip(self._inputs, self._input_at, strict=True)
            }
        )

    def line_parts(self, letters: Letters) -> tuple[str, str]:
        """The line (with its LF) around the student number, memoised by the values."""
        values = tuple(letter.value for letter in letters)
        parts = self._parts.get(values)
        if parts is None:
            before, _, after = output_line("\0", values, self.profile.columns).partition("\0")
            parts = self._parts[values] = (before, after + "\n")
        return parts

    def skip(self, reason: str, detail: str) -> None:
        self.summary.skip(reason)
        self.skips.append(Skip(reason, detail))

    def student_of_rows(self, rows: list[tuple]) -> Student | None:
        """The student behind rows that share a student_number, or None if skipped.

        Rows of one DCID are one student (several extension or race rows).
        Several DCIDs under one number are written once if they agree, and
        not at all if they do not: the import would keep whichever came last.
        """
        by_dcid: dict[Any, list[tuple]] = {}
        for row in rows:
            by_dcid.setdefault(row[self.dcid_at], []).append(row)
        students: list[tuple[Any, str, Letters, tuple]] = []
        for dcid, dcid_rows in by_dcid.items():
            first = dcid_rows[0]
            if any(row[self.test_at] for row in dcid_rows):
                self.skip(SKIP_TEST_NAME, f"student DCID {escape_text(dcid)}: test-student name")
                continue
            number = student_number_text(first[self.number_at])
            if number is None:
                self.skip(
                    SKIP_NO_NUMBER,
                    f"student DCID {escape_text(dcid)}: student_number "
                    f"{escape_text(repr(first[self.number_at]))} is not a number",
                )
                continue
            letters = (
                self.combination(first).letters if len(dcid_rows) == 1 else self.letters_of_rows(dcid_rows)
            )
            students.append((dcid, number, letters, first))
        if not students:
            return None
        number, letters, row = students[0][1], students[0][2], students[0][3]
        if len({tuple(letter.value for letter in student[2]) for student in students}) > 1:
            dcids = ", ".join(escape_text(student[0]) for student in students)
            self.skip(
                SKIP_DUPLICATE,
                f"student {number}: {len(students)} active rows (DCIDs {dcids}) with different values; "
                "no line written until PowerSchool holds one student per number",
            )
            return None
        self.summary.add(letters, 1)
        self.remember(int(number))
        return Student(number, letters, *self.line_parts(letters), row)

    def compare(self, student: Student) -> tuple[str, ...]:
        """Tonight's values beside PowerSchool's current ones, counted (and seen by
        the import check): the fields that change."""
        if not self.compares:
            return ()
        current = self.current_of(student.row)
        if self.import_check is not None:
            self.import_check.see(int(student.number), current)
        for field, letter, now in zip(self.fields, student.letters, current, strict=True):
            if not letter.value and current_text(now):
                self.summary.blank_but_set[field] += 1  # a blank the import may not apply
        changes = changed_fields(student.letters, current, self.fields)
        if changes:
            self.summary.changed += 1
            self.summary.changed_by_field.update(change.partition(" ")[0] for change in changes)
        return changes

    def remember(self, number: int) -> None:
        """Note a student's number, for numbers stored in several forms."""
        self.in_order, self.last = self.in_order and number > self.last, number
        try:
            self.seen_numbers.append(number)
        except OverflowError:
            self.big_numbers.append(number)

    def repeated_numbers(self) -> frozenset[int]:
        """Numbers written more than once although their rows did not arrive together:
        student_number stored as text in different forms ('1013', ' 1013 ', '1013.0').
        PowerSchool's column is numeric, so this is a SQLite trial's case."""
        if self.in_order and not self.big_numbers:
            return frozenset()
        ordered = sorted(self.seen_numbers)
        repeated = {a for a, b in itertools.pairwise(ordered) if a == b}
        repeated |= {n for n, count in collections.Counter(self.big_numbers).items() if count > 1}
        return frozenset(repeated)

    def describe(self, student: Student, rows: list[tuple]) -> str:
        """The -v detail line: which source values became which Clever values."""
        sources = {
            name: "/".join(dict.fromkeys(escape_text(repr(row[at])) for row in rows))
            for name, at in zip(self._inputs, self._input_at, strict=True)
        }
        parts = []
        for field, letter in zip(self.fields, student.letters, strict=True):
            read = ", ".join(
                f"{name} {sources[name]}" for name in VALUE_FIELDS[field].inputs if name in sources
            )
            parts.append(f"{read or '-'} -> {field} {letter.value or f'blank ({letter.reason})'}")
        return f"student {student.number}: " + "; ".join(parts)


_ALL_INPUTS = frozenset(name for field in VALUE_FIELDS.values() for name in field.inputs)


def _tuple_getter(indexes: list[int]) -> Callable[[tuple], tuple]:
    """Like operator.itemgetter, but always returns a tuple."""
    if len(indexes) >= 2:
        return operator.itemgetter(*indexes)
    if len(indexes) == 1:
        index = indexes[0]
        return lambda row: (row[index],)
    return lambda row: ()


class Skip(NamedTuple):
    reason: str  # what the summary and the report count
    detail: str  # the log line: names the student, so the log file only


REPORT_REASONS = 20  # the --dry-run report lists this many reasons per field
REASONS_KEPT = 1000  # distinct reasons counted per field; the rest are "other"


@dataclasses.dataclass
class Summary:
    """Counts for the summary line and the --dry-run report; bounded whatever the data."""

    fields: tuple[str, ...] = tuple(VALUE_FIELDS)
    written: int = 0
    changed: int = 0
    compared: bool = False
    exported: int = 0  # active students who get a line, before --changed-only chooses
    values: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    reasons: dict[str, collections.Counter] = dataclasses.field(default_factory=dict)
    other_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    blank_but_set: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    changed_by_field: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, letters: Letters, students: int) -> None:
        self.exported += students
        for field, letter in zip(self.fields, letters, strict=True):
            self.values.setdefault(field, collections.Counter())[letter.value] += students
            if not letter.value:
                reasons = self.reasons.setdefault(field, collections.Counter())
                if letter.reason in reasons or len(reasons) < REASONS_KEPT:
                    reasons[letter.reason] += students
                else:
                    self.other_reasons[field] += students

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def blanks(self, field: str) -> int:
        return self.values.get(field, collections.Counter())[""]

    def line(self, seconds: float) -> str:
        changed = f", changed {self.changed}" if self.compared else ""
        blanks = "".join(f", blank {field} {self.blanks(field)}" for field in self.fields)
        return (
            f"summary: written {self.written}, skipped {self.skipped.total()}, exported {self.exported}"
            f"{changed}{blanks}, seconds {seconds:.2f}"
        )

    def report(self) -> str:
        lines = [
            "dry run: nothing uploaded",
            f"  exported students: {self.exported} (each with a line; skipped ones below)",
        ]
        for field in self.fields:
            values = self.values.get(field, collections.Counter())
            counts = ", ".join(f"{value or 'blank'} {n}" for value, n in sorted(values.items()) if n)
            lines.append(f"  {field}: {counts or 'none'}")
            reasons = self.reasons.get(field, collections.Counter())
            ranked = [(reason, n) for reason, n in reasons.most_common() if n > 0]
            lines.extend(f"    blank, {reason}: {n}" for reason, n in ranked[:REPORT_REASONS])
            rest = sum(n for _, n in ranked[REPORT_REASONS:]) + self.other_reasons[field]
            if rest:
                more = len(ranked) - REPORT_REASONS + (1 if self.other_reasons[field] else 0)
                lines.append(
                    f"    blank, and {max(more, 1)}{'+' if self.other_reasons[field] else ''} more reasons: {rest}"
                )
        lines.append(f"  skipped: {self.skipped.total()}")
        lines.extend(f"    {reason}: {n}" for reason, n in self.skipped.most_common())
        if self.compared:
            by_field = ", ".join(f"{field} {self.changed_by_field[field]}" for field in self.fields)
            lines.append(f"  would change: {self.changed} of {self.exported} ({by_field})")
            held = ", ".join(f"{field} {self.blank_but_set[field]}" for field in self.fields)
            lines.append(f"  blank here but set in PowerSchool (an import may not clear them): {held}")
        else:
            lines.append("  would change: not compared (no current_values table to compare with)")
        return "\n".join(lines)


class ImportCheck:
    """Did PowerSchool import the previous upload?  Pure: no I/O.

    Walks the previous upload's lines (ordered by student_number, as every
    upload is) beside tonight's rows, and for each student in both compares
    what was sent with what PowerSchool's custom fields hold now, field by
    field name (the copy keeps the columns it was written with).  A field
    sent blank that still holds a value is counted apart: whether an
    AutoComm import of a blank clears a field is not settled (docs/mapping.md).
    """

    def __init__(self, sent_lines: Iterable[str], sent_columns: Iterable[str], fields: tuple[str, ...]):
        sent_columns = list(sent_columns)
        self._lines = iter(sent_lines)
        self._number_at = sent_columns.index("student_number")
        self._compared_at = [
            (at, sent_columns.index(field)) for at, field in enumerate(fields) if field in sent_columns
        ]
        self.fields = fields
        self.compared = 0
        self.differing = 0
        self.blank_not_applied: collections.Counter = collections.Counter()
        self.example: tuple[str, str, str, str] | None = None  # number, field, sent, PowerSchool's
        self.blank_example: tuple[str, str, str] | None = None  # number, field, PowerSchool's
        self.usable = True  # False when the sent file is not in student_number order
        self._last = -1
        self._next = self._read()

    def _read(self) -> tuple[int, list[str]] | None:
        for line in self._lines:
            parts = line.rstrip("\n").split("\t")
            try:
                number = int(parts[self._number_at])
            except (ValueError, IndexError):
                continue  # a header line
            if number <= self._last:
                self.usable = False
            self._last = number
            return number, parts
        return None

    def see(self, number: int, current: tuple) -> None:
        """Tonight's student and the values PowerSchool holds for them now (in `fields` order)."""
        while self._next is not None and self._next[0] < number:
            self._next = self._read()
        if self._next is None or self._next[0] != number:
            return
        sent = self._next[1]
        self.compared += 1
        blank_fields = []
        for at, sent_at in self._compared_at:
            was_sent = sent[sent_at] if sent_at < len(sent) else ""
            now = current_text(current[at])
            if now == was_sent:
                continue
            if not was_sent:
                blank_fields.append((self.fields[at], now))
                continue
            self.differing += 1
            if self.example is None:
                self.example = (str(number), self.fields[at], was_sent, now)
            return
        for field, now in blank_fields:
            self.blank_not_applied[field] += 1
            if self.blank_example is None:
                self.blank_example = (str(number), field, now)

    def percent_differing(self) -> float:
        return 100.0 * self.differing / self.compared if self.compared else 0.0


def export_lines(batches: Iterable[list[tuple]], mapper: StudentMapper, changed_only: bool) -> Iterator[str]:
    """The file's text, one line (with its LF) per student, handed on a batch at a
    time; logs each skip, the -v detail and --changed-only's changes (the log file
    only).  Every count is the mapper's, in mapper.summary.

    This is the export's hot path, one pass over the rows.  Rows arrive ordered
    by student_number, so a student's rows (under one raw student_number) are
    neighbours, and a student is complete when a row with another number comes
    (after the last batch, END_ROW).  The usual student (one row, a whole number
    above the last, no test name, no -v, no comparison) takes its memoised
    combination and nothing else; any other goes through `careful`.
    """
    detail = FILE_LOG.isEnabledFor(logging.DEBUG)
    # The quick path takes numbers below this: what the numbers array holds (64 bits), none under -v or a comparison.
    quick_below = 0 if detail or mapper.compares else 2**63
    number_at, test_at, combination = mapper.number_at, mapper.test_at, mapper.combination
    memo_get, codes_of, remember = mapper.memo.get, mapper.codes_of, mapper.seen_numbers.append
    first, more, number, previous, left_out = None, None, END_ROW[0], -1, 0

    def careful(rows: list[tuple]) -> str | None:
        """The line for any student, with skips logged, -v detail and the comparison."""
        nonlocal left_out
        student = mapper.student_of_rows(rows)
        for skipped in mapper.skips:
            if skipped.reason == SKIP_DUPLICATE:
                FILE_LOG.warning("%s", skipped.detail)
            else:
                FILE_LOG.info("skipped: %s", skipped.detail)
        mapper.skips.clear()
        if student is None:
            return None
        if detail:
            FILE_LOG.debug("%s", mapper.describe(student, rows))
        changes = mapper.compare(student)
        if changed_only and changes:
            FILE_LOG.info("student %s: %s", student.number, "; ".join(changes))
        elif changed_only and mapper.compares:
            left_out += 1
            return None
        return student.before + student.number + student.after

    try:
        for batch in itertools.chain(batches, [[END_ROW * (number_at + 1)]]):
            out: list[str] = []  # a batch's lines, handed on together: one hand-over per batch
            for row in batch:
                if row[number_at] == number:  # the same student's next row
                    more = more or [first]
                    more.append(row)
                    continue
                if (
                    more is None
                    and type(number) is int
                    and previous < number < quick_below
                    and not first[test_at]
                ):
                    found = memo_get(codes_of(first)) or combination(first)
                    found.students += 1  # folded into the summary by the mapper
                    previous = number
                    remember(number)
                    out.append(found.before + str(number) + found.after)
                elif first is not None:
                    mapper.last = previous  # the order is the mapper's to judge
                    line = careful(more or [first])
                    previous = mapper.last
                    if line is not None:
                        out.append(line)
                first, more, number = row, None, row[number_at]
            if out:
                yield "".join(out)
    finally:
        mapper.fold_counts()
        mapper.summary.written = mapper.summary.exported - left_out


END_ROW = (object(),)  # repeated to the student_number's place: a row no number equals


# =============================================================================
# File: UTF-8, LF, tab-delimited, owner-only, replaced atomically
# =============================================================================

OWNER_ONLY = 0o600  # student data: the service account alone reads it (Linux/macOS)


def unusable(what: str, path: Path | str, error: OSError, flag: str) -> ConfigError:
    """The one line for a file or folder `path` this run cannot use: `what` it could not
    do, the system's reason, and the fix: a refusal is the owner's to put right
    (give_back); anything else (a full disk, a name too long) wants another path."""
    reason = "does not exist" if isinstance(error, FileNotFoundError) else error.strerror or error
    owner = f"{give_back(Path(path))}, or " if isinstance(error, PermissionError) else ""
    other = f"choose another with {flag}" if flag.startswith("--") else f"check {flag}"
    return ConfigError(f"{what} ({reason}); {owner}{other}")


def give_back(path: Path) -> str:
    """The fix for a file (or the folder it would go in) this account is refused,
    by its owner: root's, after a run as root, is given back with the command
    that does it; another account's is that account's job to run."""
    if os.name != "posix":
        return "was the job run once as Administrator? Give the account that runs the job full control of it"
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), path)
    try:
        owner = existing.stat().st_uid
    except OSError:
        owner = None
    me = os.geteuid()
    if owner == 0 and me != 0:
        return f"was the job run once as root? As root: chown {account_name(me)} {shlex.quote(str(existing))}"
    if owner is not None and owner != me:
        return f"{existing} belongs to {account_name(owner)}: run this as that account"
    return f"check the mode of {existing}"


def refuse_root_in_anothers_folder(state_path: Path) -> None:
    """A run as root in a set-up another account owns stops before it writes anything:
    root-owned files (log, state, kept copy, output) would fail that account's next night.
    A set-up root owns (root's own cron job) runs."""
    if os.name != "posix" or os.geteuid() != 0:
        return
    for path in (SCRIPT_DIR, state_path, state_path.parent):
        with contextlib.suppress(OSError):
            if (owner := path.stat().st_uid) != 0:
                account = account_name(owner)
                run_as = ["sudo", "-u", account] if shutil.which("sudo") else ["runuser", "-u", account, "--"]
                command = [*run_as, sys.executable, str(beside_script(Path(__file__).resolve().name))]
                raise ConfigError(
                    f"this is a run as root, but {path} belongs to {account}: it would leave root-owned "
                    f"files that {account}'s next run cannot use, so nothing was done. Run it as "
                    f"{account}, with the same flags: {shell_command(command)} …"
                )


def account_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # an account /etc/passwd does not list (a container's bare UID)
        return str(uid)


def narrow_to_owner(path: Path | str, descriptor: int | None = None) -> None:
    """Make a file the script writes mode 600 whatever the umask (no-op on Windows,
    where the folder's ACL decides: see README, Where student data goes)."""
    if os.name != "posix":
        return
    # Only a regular file: --log-file /dev/null run as root must not change /dev/null.
    if descriptor is not None:
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.fchmod(descriptor, OWNER_ONLY)
    elif stat.S_ISREG(os.stat(path).st_mode):
        os.chmod(path, OWNER_ONLY)


@contextlib.contextmanager
def atomic_file(path: Path, flag: str, binary: bool = False) -> Iterator[Any]:
    """A file written whole or not at all: a temporary file beside `path`
    (mode 600 from its creation), flushed to disk, then renamed over `path`.
    A crash or a full disk leaves the previous file, never half a file.

    Text is UTF-8 without BOM with LF line ends whatever the platform (the
    importer's format; Windows would write CRLF and its code page).  The one
    writer of the export, the state file and the import check's copy.
    """
    descriptor, temp_name = temporary_beside(path, flag)
    try:
        narrow_to_owner(temp_name, descriptor)
        with (
            open(descriptor, "wb") if binary else open(descriptor, "w+", encoding="utf-8", newline="\n")
        ) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        replace_when_free(temp_name, path, flag)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        if isinstance(error, OSError) and not isinstance(error, socket.timeout):
            raise ConfigError(
                f"cannot write {path} ({error.strerror or error}); the previous file is unchanged. "
                f"Free disk space or fix the folder's permissions (or choose another with {flag}), then rerun"
            ) from None
        raise


IN_USE_RETRIES = (0.2, 0.5, 1.0, 2.0)  # seconds: a virus scanner lets go of a file within seconds


def replace_when_free(temp_name: str, path: Path, flag: str) -> None:
    """os.replace, waiting briefly while another program holds `path` open
    (Windows refuses to replace an open file: an editor, a scanner, a share's sync)."""
    for wait in (*IN_USE_RETRIES, None):
        try:
            os.replace(temp_name, path)
            return
        except PermissionError:
            if os.name != "nt" or not path.exists():
                raise
            if wait is None:
                raise ConfigError(
                    f"cannot replace {path}: it is in use by another program (an editor, a virus scanner, "
                    "a file share's sync); the previous file is unchanged. Close it, or exclude the folder "
                    f"from scanning, then rerun (or choose another path with {flag})"
                ) from None
            time.sleep(wait)


def temporary_beside(path: Path, flag: str) -> tuple[int, str]:
    """A new, empty temporary file in the folder of `path` (created if missing)."""
    make_folder(path, flag)
    try:
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise unusable(f"cannot create a file in {path.parent}", path.parent, error, flag) from None


def make_folder(path: Path, flag: str) -> None:
    """The folder `path` goes in, created if missing; a file in its way is named as such."""
    folder = path.parent
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"cannot create {path}: {part} is a file, not a folder; fix {flag}")
    try:
        make_owner_only_folders(folder)
    except OSError as error:
        raise unusable(f"cannot create the folder of {path}", path, error, flag) from None


def make_owner_only_folders(folder: Path) -> None:
    """Create the missing folders on the way to `folder`, each the account's alone
    (mode 700 whatever the umask: pathlib gives parents the default mode)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for part in reversed(missing):
        part.mkdir(mode=0o700, exist_ok=True)
        if os.name == "posix":
            os.chmod(part, 0o700)


PROBE_BYTES = 1 << 16  # --check writes this much: a disk with no room fails here, not at night


def probe_folder(path: Path, flag: str) -> None:
    """Prove the folder `path` goes in writable, with room (for --check), leaving nothing."""
    descriptor, temp_name = temporary_beside(path, flag)
    try:
        with open(descriptor, "wb") as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as error:
        raise unusable(f"cannot write in {path.parent}", path.parent, error, flag) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed run left beside the output (never more than one a run)."""
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


STATE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # local time with its UTC offset


def now_text() -> str:
    # datetime's %z is Python's own +hhmm (time.strftime's may be a zone name on Windows).
    return datetime.datetime.now().astimezone().strftime(STATE_TIME_FORMAT)


def hours_since(when: str) -> float | None:
    """Hours from a recorded time (with its UTC offset) to now; None if unreadable."""
    try:
        at = datetime.datetime.strptime(when, STATE_TIME_FORMAT).timestamp()
    except (ValueError, OverflowError, OSError, TypeError):
        return None
    return (time.time() - at) / 3600


def shown_time(when: str) -> str:
    """A recorded time as messages show it: to the minute, with its UTC offset."""
    try:
        return datetime.datetime.strptime(when, STATE_TIME_FORMAT).strftime("%Y-%m-%d %H:%M %z")
    except (ValueError, TypeError):
        return escape_text(str(when))[:40]


@dataclasses.dataclass
class RunRecord:
    """What --status shows of a run; run-level only, never a student's data."""

    started: str
    finished: str = ""
    exit_code: int | None = None
    message: str = ""
    students: int | None = None
    bytes: int | None = None
    remote_path: str = ""


@dataclasses.dataclass
class UploadRecord:
    """The last upload: the safety guard's count, --status, the import check's copy."""

    students: int
    at: str = ""
    bytes: int | None = None
    remote_path: str = ""
    changed_only: bool = False
    sent_sha256: str = ""  # the kept copy's hash: the copy is the upload's
    columns: list[str] | None = None  # the kept copy's columns, as it was written


@dataclasses.dataclass
class ImportCheckRecord:
    """Did PowerSchool import the previous upload?  Counts and a field name only."""

    at: str
    upload_at: str
    compared: int = 0
    differing: int = 0
    example: str = ""  # which field differed, never a student
    skipped: str = ""
    blank_not_applied: dict[str, int] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        if self.skipped:
            return escape_text(f"last import check: {self.at}: skipped ({self.skipped})")
        example = f"; e.g. {self.example}" if self.example else ""
        counts = self.blank_not_applied if isinstance(self.blank_not_applied, dict) else {}
        blanks = "".join(
            f"; {escape_text(field)} sent blank but still set: {count}" for field, count in counts.items()
        )
        return escape_text(
            f"last import check: {self.at} (upload of {self.upload_at}): "
            f"{self.differing} of {self.compared} students differed{example}{blanks}"
        )


def _record_of(kind: type, value: Any) -> Any:
    """A typed record from the state file's JSON, or None if it is not one."""
    if not isinstance(value, dict):
        return None
    names = {field.name for field in dataclasses.fields(kind)}
    try:
        return kind(**{key: item for key, item in value.items() if key in names})
    except TypeError:  # a required field missing
        return None


class State:
    """The state file: the last run, the last upload and the last import check.

    Loaded once a run; save() is the one writer.  A file that cannot be read
    is kept with its problem (exit 5 if damaged, 2 if another account's) and
    never overwritten (it holds the count the safety guard compares with)
    until --force starts it afresh.
    """

    def __init__(self, path: Path):
        self.path = path
        self.problem: ExportError | None = None  # exit 5 if damaged, 2 if another account's
        self.last_run: RunRecord | None = None
        self.last_upload: UploadRecord | None = None
        self.last_import_check: ImportCheckRecord | None = None
        self.running: str = ""  # when the run that holds the lock started

    @classmethod
    def load(cls, path: Path) -> State:
        state = cls(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            return state
        except PermissionError as error:  # not damaged: an owner problem (exit 2), and --force is not its fix
            state.problem = unusable(f"cannot read the state file {path}", path, error, "--state-file")
            return state
        except (OSError, ValueError) as error:
            document = f"cannot be read ({foreign_text(error, 120)}): the safety guard cannot compare with it"
        upload = document.get("last_upload") if isinstance(document, dict) else None
        count = upload.get("students") if isinstance(upload, dict) else None
        damage = (
            document if isinstance(document, str)
            else "is not a record of runs" if not isinstance(document, dict)
            else f"holds no usable student count for the last upload ({escape_text(repr(count))[:40]})"
            if upload is not None and (type(count) is not int or count < 0)
            else ""
        )  # fmt: skip
        if damage:
            state.problem = ExportError(
                f"state file {path} {damage}; rerun with --force to upload and rewrite it", EXIT_GUARD
            )
            return state
        state.last_upload = _record_of(UploadRecord, upload)
        state.last_run = _record_of(RunRecord, document.get("last_run"))
        state.last_import_check = _record_of(ImportCheckRecord, document.get("last_import_check"))
        running = document.get("running")
        state.running = str(running.get("started", "?")) if isinstance(running, dict) else ""
        return state

    def require(self) -> State:
        """The state, or the problem that keeps it from being read (exit 5)."""
        if self.problem is not None:
            raise self.problem
        return self

    def save(self) -> None:
        """Write every record (temp + rename), unless the file could not be read."""
        if self.problem is not None:
            raise self.problem
        document: dict[str, Any] = {
            "last_run": self.last_run,
            "last_upload": self.last_upload,
            "last_import_check": self.last_import_check,
            "running": {"started": self.running} if self.running else None,
        }
        document = {
            key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            for key, value in document.items()
            if value is not None
        }
        with atomic_file(self.path, "--state-file") as stream:
            stream.write(json.dumps(document, indent=2, sort_keys=True) + "\n")

    def save_or_warn(self, failure_is_quiet: bool, what: str) -> None:
        """save(), for records whose loss must not change the run's outcome."""
        try:
            self.save()
        except Exception as error:
            if not log_is_open():  # before the log opened: the failure's one line says it all
                return
            # After a failure the admin needs the failure's one line, not this one.
            logger = FILE_LOG if failure_is_quiet else LOG
            logger.warning("%s: %s", what, foreign_text(error))


def check_guard(students: int, previous: int | None, max_drop_percent: float) -> None:
    """Refuse an export that looks collapsed (a broken query, an empty table)."""
    if students == 0:
        raise ExportError(
            "the export has 0 students, so it was not uploaded; check the database "
            "and the query, or rerun with --force if that is really right",
            EXIT_GUARD,
        )
    if previous:
        drop = 100.0 * (previous - students) / previous
        if drop > max_drop_percent:
            raise ExportError(
                f"the export has {students} students, {drop:.1f}% fewer than the {previous} "
                f"of the last upload (limit --max-drop {max_drop_percent:g}%), so it was not "
                "uploaded; check the data, or rerun with --force if the drop is real",
                EXIT_GUARD,
            )


# =============================================================================
# Upload: SFTP with verified host keys, temporary name, rename, size check
# =============================================================================


class SftpLogin(NamedTuple):
    """What the run checks before any work and the upload then uses: loaded once."""

    known: KnownHosts  # the server's trusted (and revoked) keys
    client_key: Any  # the SFTP login key (paramiko PKey), or None for a password


def prepare_login(sftp: SftpSettings) -> SftpLogin:
    """known_hosts read and the login key loaded: every problem named before any work."""
    return SftpLogin(check_known_hosts(sftp), load_client_key(sftp) if sftp.logs_in_with_a_key else None)


class KnownHosts(NamedTuple):
    entries: list  # paramiko HostKeyEntry, for the lines that name a host and a key
    revoked: list  # paramiko PKey of every @revoked line
    revoked_entries: list  # the @revoked lines as HostKeyEntry, to name a revoked host

    def trusts(self, host_name: str, key) -> bool:
        """Whether a non-revoked line names this host with exactly this key."""
        import paramiko

        if any(key == revoked for revoked in self.revoked):
            return False
        for entry in self.entries:
            if entry.key == key:
                one = paramiko.HostKeys()
                for name in entry.hostnames:
                    one.add(name, key.get_name(), key)
                if one.lookup(host_name) is not None:
                    return True
        return False

    def host_keys(self, which: str = "trusted", keys=None):
        """paramiko HostKeys (new, or `keys` filled in) of the "trusted" lines (a key
        revoked anywhere is never trusted, even where a line lists it), of every plain
        line ("listed"), or of the @revoked lines ("revoked")."""
        import paramiko

        keys = paramiko.HostKeys() if keys is None else keys
        for entry in self.revoked_entries if which == "revoked" else self.entries:
            if which == "trusted" and any(entry.key == key for key in self.revoked):
                continue
            for name in entry.hostnames:
                keys.add(name, entry.key.get_name(), entry.key)
        return keys


def read_known_hosts(sftp: SftpSettings) -> KnownHosts:
    """Parse known_hosts as OpenSSH does; a line we cannot use is skipped with a warning."""
    import paramiko

    path = sftp.known_hosts_path
    if path.is_dir():
        raise ConfigError(f"known_hosts {path} is a directory, not a file; check --known-hosts")
    try:
        text = path.read_bytes().decode("utf-8").removeprefix("\ufeff")  # Notepad's, PowerShell's BOM
    except FileNotFoundError:
        raise ConfigError(
            f"known_hosts file {path} does not exist; create it with the "
            "server's key (run --show-host-key and see README, Host key)"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"known_hosts file {path} is not UTF-8 text (was it saved by a word processor?); "
            "recreate it with the line --show-host-key prints"
        ) from None
    except OSError as error:
        raise unusable(f"cannot read known_hosts file {path}", path, error, "--known-hosts") from None
    entries, revoked = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        marker = ""
        if line.startswith("@"):
            marker, _, line = line.partition(" ")
            line = line.strip()
            if marker != "@revoked":
                LOG.warning(
                    "known_hosts %s line %d skipped: %s lines are not supported", path, number, marker[:20]
                )
                continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, number)
        except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, ValueError):
            entry = None
        if entry is None:
            LOG.warning("known_hosts %s line %d skipped: %s", path, number, known_hosts_line_problem(line))
        elif marker == "@revoked":
            revoked.append(entry)
        else:
            entries.append(entry)
    return KnownHosts(entries, [entry.key for entry in revoked], revoked)


def known_hosts_line_problem(line: str) -> str:
    fields = line.split()
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].startswith(("SHA256:", "MD5:")):
        return "it is a fingerprint (as ssh-keygen -l prints), not a key: add the line --show-host-key prints"
    return "not host, key type and key, or a key type paramiko does not know"


def check_known_hosts(sftp: SftpSettings) -> KnownHosts:
    """Before any work: known_hosts is readable (else ConfigError) and names the
    server (else SftpError).  Connecting verifies the key itself."""
    known = read_known_hosts(sftp)
    name = sftp.known_hosts_name
    if known.host_keys().lookup(name) is None:
        if any(known.host_keys(which).lookup(name) is not None for which in ("listed", "revoked")):
            raise SftpError(
                f"the host key for {sftp.known_hosts_name} in {sftp.known_hosts_path} is marked @revoked "
                "and there is no other; the server needs a new key: ask its administrator for its "
                "fingerprint, then add the new key's line"
            )
        raise SftpError(
            f"{sftp.known_hosts_path} has no usable host key for {name}{other_ports_note(known, sftp)}; "
            "run clever_export.py --show-host-key (it also says whether the server can be reached), "
            "compare the fingerprint with the server's, and add the line it prints"
        )
    return known


def other_ports_note(known: KnownHosts, sftp: SftpSettings) -> str:
    """A key saved for this host on another port points at D118_SFTP_PORT; no key
    at all, as likely at a mistyped address as at a missing line."""
    ports = {22} if known.host_keys().lookup(sftp.host) is not None else set()
    prefix = f"[{sftp.host}]:".lower()
    for entry in known.entries:
        ports.update(int(name[len(prefix) :]) for name in map(str.lower, entry.hostnames)
                     if name.startswith(prefix) and re.fullmatch("[0-9]{1,5}", name[len(prefix) :]))  # fmt: skip
    ports.discard(sftp.port)
    if 22 in ports:  # a line without [host]:port is the port-22 form
        return (
            f" (a line names {sftp.host} without a port, which means port 22; for port {sftp.port} it must "
            f"begin [{sftp.host}]:{sftp.port}, as --show-host-key prints it)"
        )
    if ports:
        listed = ", ".join(str(port) for port in sorted(ports))
        return f" (only for {sftp.host} on port {listed}: is D118_SFTP_PORT {sftp.port} right?)"
    return f" (is D118_SFTP_ADDRESS {sftp.host} right?)"


def fingerprint_line(key, host_name: str) -> str:
    """The key's fingerprint as `ssh-keygen -lf` prints it."""
    kind = key.algorithm_name
    return f"{key.get_bits()} {key.fingerprint} {host_name} ({kind})"


def load_client_key(sftp: SftpSettings):
    """The SFTP login key, loaded before any work: every problem is exit 2, named."""
    import paramiko

    path = sftp.key_file
    name = "D118_SFTP_KEY_FILE"
    if path is None:  # the key itself, from Windows Credential Manager
        passphrase = sftp.key_passphrase.reveal() if sftp.key_passphrase else None
        for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            with contextlib.suppress(paramiko.SSHException, ValueError, TypeError):
                return kind.from_private_key(io.StringIO(sftp.key.reveal()), passphrase)
        raise ConfigError("D118_SFTP_KEY (Windows Credential Manager) is not an OpenSSH private key that opens "
                          "with D118_SFTP_KEY_PASSPHRASE; store it again")  # fmt: skip
    if path.is_dir():
        raise ConfigError(f"{name} {path} is a directory; point it at the private key file")
    try:
        head = path.read_bytes()[:64]
    except OSError as error:
        raise unusable(f"cannot read {name} {path}", path, error, name) from None
    if head.startswith(b"PuTTY-User-Key-File"):
        raise ConfigError(
            f"{name} {path} is a PuTTY .ppk key; convert it to OpenSSH format with "
            f"puttygen {path.name} -O private-openssh -o {path.stem} and point {name} at the result"
        )
    refuse_if_shared(path, f"{name} {path}")
    passphrase = sftp.key_passphrase.reveal().encode("utf-8") if sftp.key_passphrase else None
    try:
        # Decrypting a key with many KDF rounds takes seconds: a stop does not wait for it.
        return bounded(lambda: paramiko.PKey.from_path(str(path), passphrase), f"decrypting {name}", math.inf)
    except (paramiko.SSHException, ValueError, TypeError) as error:
        failure = error
    if passphrase is not None:
        # A passphrase left over for a key that has none is ignored, as OpenSSH does.
        with contextlib.suppress(paramiko.SSHException, ValueError, TypeError):
            return paramiko.PKey.from_path(str(path), None)
    if _key_is_encrypted(path):
        if passphrase is None:
            raise ConfigError(f"{name} {path} is encrypted; set D118_SFTP_KEY_PASSPHRASE")
        raise ConfigError(f"D118_SFTP_KEY_PASSPHRASE does not open {name} {path}; check the passphrase")
    raise ConfigError(
        f"{name} {path} is not a private key paramiko can read ({foreign_text(failure, 80)}); "
        "use an OpenSSH-format key (ssh-keygen -t ed25519 -f KEY)"
    )


def _key_is_encrypted(path: Path) -> bool:
    """Whether the key needs a passphrase (loading it without one says so)."""
    import paramiko

    try:
        paramiko.PKey.from_path(str(path), None)
    except TypeError as error:
        return "password" in str(error).lower()
    except (paramiko.SSHException, ValueError):
        return False
    return False


class _KnownHostsOnly:
    """Refuse an unknown host key, as RejectPolicy does, keeping the key so the
    message can say whether it is one known_hosts marks @revoked."""

    def missing_host_key(self, client, hostname, key) -> None:
        raise _UnknownHostKey(key)


class _UnknownHostKey(Exception):
    def __init__(self, key):
        super().__init__("host key not found in known_hosts")
        self.key = key


def open_sftp(sftp: SftpSettings, login: SftpLogin) -> SftpSession:
    """Log in with the host key checked against known_hosts.

    known_hosts may hold two keys of one type for a host (two servers behind a
    name, a key rotation); paramiko compares with one, so a key that matches
    another trusted line is tried once more with that line, as OpenSSH accepts it.
    """
    import paramiko

    try:
        return _connect(sftp, login)
    except paramiko.BadHostKeyException as error:
        if not login.known.trusts(sftp.known_hosts_name, error.key):
            raise sftp_failure(error, sftp, login.known) from None
        offered = error.key
    try:
        return _connect(sftp, login, offered)
    except BaseException as error:
        raise sftp_failure(error, sftp, login.known) from None


def _connect(sftp: SftpSettings, login: SftpLogin, expected_key=None) -> SftpSession:
    import paramiko

    known = login.known
    client = paramiko.SSHClient()
    known.host_keys(keys=client.get_host_keys())
    if expected_key is not None:
        client.get_host_keys().add(sftp.known_hosts_name, expected_key.get_name(), expected_key)
    client.set_missing_host_key_policy(_KnownHostsOnly())
    session = SftpSession(None, sftp, client, None)
    offered: dict[str, list[str]] = {}
    try:
        # Our own socket, known before the handshake: a server that hangs at any step is cut.
        session.sock = open_socket(sftp)

        def log_in():
            client.connect(
                sftp.host,
                sock=session.sock,
                port=sftp.port,
                username=sftp.username,
                password=sftp.password.reveal() if sftp.password else None,
                pkey=login.client_key,
                allow_agent=False,
                look_for_keys=False,
                transport_factory=lambda sock, **options: offer_keeping_transport(sock, offered, **options),
            )
            return client.open_sftp()

        session.target = session.run(log_in, "login")
    except paramiko.BadHostKeyException:
        session.disconnect()
        raise
    except BaseException as error:
        session.disconnect()
        raise sftp_failure(error, sftp, known, offered=offered) from None
    return session


# The server's key exchange offer, as paramiko parses it -> how a message names each list.
KEX_OFFER = {"kex_algo_list": "key exchange", "server_key_algo_list": "host key",
             "server_encrypt_algo_list": "cipher", "server_mac_algo_list": "MAC"}  # fmt: skip


def offer_keeping_transport(sock, offered: dict[str, list[str]], **options):
    """A paramiko Transport that keeps what the server offers in key exchange in
    `offered`, for the message when no algorithm is common (paramiko's own names
    only the kind it lacked; the server's owner needs the list it offers)."""
    import paramiko

    class OfferKeeping(paramiko.Transport):
        def _really_parse_kex_init(self, m, ignore_first_byte=False):
            parsed = super()._really_parse_kex_init(m, ignore_first_byte)
            offered.update({kind: parsed[key] for key, kind in KEX_OFFER.items()})
            return parsed

    return OfferKeeping(sock, **options)


SFTP_REACH_FIX = "check the server is up and reachable (D118_SFTP_ADDRESS, D118_SFTP_PORT, firewall)"


def open_socket(sftp: SftpSettings) -> socket.socket:
    return bounded(
        lambda: socket.create_connection((sftp.host, sftp.port), timeout=sftp.timeout),
        f"the connection to SFTP server {sftp.host}:{sftp.port}", sftp.timeout, TransientSftpError,
        fix=SFTP_REACH_FIX,
    )  # fmt: skip


class SftpSession:
    """An SFTP session, or a file open on it, whose every request ends by
    --timeout (bounded): a server that stalls or trickles is cut, its socket
    shut, like one that never answers.  Its methods are paramiko's."""

    def __init__(self, target, sftp: SftpSettings, client, sock: socket.socket | None):
        self.target, self.sftp, self.client, self.sock = target, sftp, client, sock

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.target, name)
        return lambda *args, **kwargs: self.run(lambda: method(*args, **kwargs), name)

    def run(self, action: Callable[[], Any], name: str) -> Any:
        from paramiko import SFTPFile

        where = f"{self.sftp.host}:{self.sftp.port}"
        what = f"the SFTP {name} on {where}"
        result = bounded(action, what, self.sftp.timeout, TransientSftpError, self.cut, SFTP_REACH_FIX)
        return self.file(result) if isinstance(result, SFTPFile) else result

    def file(self, target) -> SftpSession:
        return SftpSession(target, self.sftp, self.client, self.sock)

    def cut(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)

    def disconnect(self) -> None:
        """Close the connection and its socket (our own, given to connect)."""
        self.client.close()
        if self.sock is not None:
            self.sock.close()

    def open_exclusive(self, path: str, mode: int | None) -> SftpSession:
        """Create `path` for writing, failing if anything stands there, with `mode`
        sent in the same request: the file is never readable by others, not even
        empty.  (paramiko's open() sends no permissions, so the server's umask would
        decide until a chmod.)"""
        from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_EXCL, SFTP_FLAG_WRITE
        from paramiko.sftp_attr import SFTPAttributes
        from paramiko.sftp_file import SFTPFile

        attributes = SFTPAttributes()
        if mode is not None:
            attributes.st_mode = mode
        client = self.target
        kind, message = self._request(
            CMD_OPEN,
            client._adjust_cwd(path),
            SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL,
            attributes,
        )
        if kind != CMD_HANDLE:
            raise OSError(f"unexpected answer to open {path}")
        return self.file(SFTPFile(client, message.get_binary(), "wb", -1))

    def __enter__(self) -> SftpSession:
        return self

    def __exit__(self, *exc_info) -> None:
        with STOP.deferred_section():  # a file's close, after a stop too: before its removal
            self.close()


def host_key_failure(error, sftp: SftpSettings, known: KnownHosts | None) -> SftpError:
    """The server's key is unknown, revoked or different: named, with what to do."""
    where = f"{sftp.host}:{sftp.port}"
    if any(error.key == key for key in (known.revoked if known else [])):
        return SftpError(
            f"host key of {where} ({error.key.fingerprint}) is marked @revoked in "
            f"{sftp.known_hosts_path}; the server must get a new key: ask its administrator"
        )
    if isinstance(error, _UnknownHostKey):
        return SftpError(
            f"{where} offered a host key that is not in {sftp.known_hosts_path}; run "
            "clever_export.py --show-host-key, compare the fingerprint with the server's, "
            "and add the line it prints"
        )
    return SftpError(
        f"host key of {where} does not match known_hosts ({error.key.fingerprint} offered, "
        f"{error.expected_key.fingerprint} expected): possibly an attack, or the server was "
        f"rebuilt; ask its administrator, then replace its line in {sftp.known_hosts_path}"
    )


def sftp_failure(
    error: BaseException,
    sftp: SftpSettings,
    known: KnownHosts | None = None,
    remote_dir: str = "",
    offered: dict[str, list[str]] | None = None,
) -> BaseException:
    """Translate a paramiko or socket error into one actionable SftpError, or a
    TransientSftpError where another attempt may succeed (a network failure)."""
    import paramiko

    if isinstance(error, ExportError) or not isinstance(error, Exception):
        return error
    if isinstance(error, (_UnknownHostKey, paramiko.BadHostKeyException)):
        return host_key_failure(error, sftp, known)
    where, in_dir = f"{sftp.host}:{sftp.port}", f" in {remote_dir}" if remote_dir else ""
    offer = "; ".join(
        f"{kind} {foreign_text(', '.join(names), 200)}" for kind, names in (offered or {}).items()
    )
    # paramiko's words for a failed login are a constant: only the methods the server allows say more.
    allowed = getattr(error, "allowed_types", None)
    cause = (error.strerror or "").lower() if isinstance(error, OSError) else ""
    # The first row the error matches gives its line; only a network failure is retried.
    for matches, retried, line in (
        (paramiko.IncompatiblePeer, False, lambda: f"no common algorithm with {where} ({foreign_text(error)}); the "
         f"server offers {offer or 'nothing paramiko could read'}. Ask its administrator to enable a current "
         "one (e.g. curve25519-sha256, ssh-ed25519, aes256-ctr, hmac-sha2-256)"),
        (lambda e: isinstance(e, paramiko.sftp.SFTPError) and "garbage packet" in str(e).lower(), False,
         lambda: f"the server {where} printed text into the SFTP session (a login script such as .bashrc "
         f"echoing for non-interactive logins); make it silent for {sftp.username}"),
        (paramiko.AuthenticationException, False, lambda: f"SFTP login as {sftp.username} on {where} failed"
         + (f" (the server allows only: {', '.join(map(escape_text, allowed))})" if allowed else "")
         + "; check D118_SFTP_USERNAME and D118_SFTP_PASSWORD or D118_SFTP_KEY_FILE"),
        (PermissionError, False, lambda: f"SFTP server {where} refused access{in_dir} ({foreign_text(error)}); "
         f"give {sftp.username} write permission on the remote directory"),
        (FileNotFoundError, False, lambda: f"SFTP path not found on {where}{in_dir} ({foreign_text(error)}); "
         "create the remote directory or fix --remote-dir (or output.remote_dir in the profile)"),
        (socket.gaierror, False, lambda: f"cannot resolve SFTP host {sftp.host!r}; check D118_SFTP_ADDRESS"),
        ((OSError, EOFError, paramiko.SSHException), True, lambda: f"SFTP connection to {where} failed{in_dir}: "
         f"{cause or foreign_text(error)}; {SFTP_REACH_FIX}"),
    ):  # fmt: skip
        if isinstance(error, matches) if isinstance(matches, (type, tuple)) else matches(error):
            return (TransientSftpError if retried else SftpError)(line())
    return error


UPLOAD_CHUNK = 32768


def refusal(error: BaseException) -> str | None:
    """The server's answer when `error` is an SFTP status (a refusal, not worth a
    retry), or None for a network failure (a reset, a timeout, a dropped link)."""
    if isinstance(error, (TimeoutError, EOFError)) or not isinstance(error, OSError):
        return None
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if type(error) is OSError and error.errno is None and str(error) != CHANNEL_CLOSED:
        return foreign_text(str(error) or "failure", 80).lower()  # paramiko's other statuses: Failure...
    return None


# paramiko's OSError (errno None, like a server's status) once the connection is
# closed, by a stop or the network: no server refused anything.
CHANNEL_CLOSED = "Socket is closed"


class RemoteRefused(SftpError):
    """The server answered an operation with a refusal: named, never retried."""

    def __init__(self, operation: str, path: str, reason: str, shown: str = ""):
        folder = posixpath.dirname(path) + "/"
        super().__init__(
            f"the server refused {operation} {shown or path} ({reason}): the account needs "
            f"{REMOTE_RIGHTS[operation]} in {folder}"
        )
        self.reason = reason


# What the account needs for each operation, as the refusal's message names it.
REMOTE_RIGHTS = {
    "OPEN": "create and write rights",
    "SETSTAT": "chmod rights",
    "RENAME": "rename/delete rights",
    "REMOVE": "delete rights",
}


class RemoteFile:
    """One file's way onto the SFTP server: the session, the final name and the
    temporary and moved-aside names beside it (dot-names, which an importer
    reading the folder never sees), the mode, and the notes the night goes on
    after (a refused chmod, a leftover).  A request that can be refused goes
    through call(), which names the refusal and the right the account lacks."""

    def __init__(self, session: SftpSession, remote_dir: str, name: str, mode: int):
        hidden = name if name.startswith(".") else f".{name}"
        self.session, self.remote_dir, self.mode = session, remote_dir, mode
        self.final, self.partial, self.previous = (
            posixpath.join(remote_dir, each) for each in (name, f"{hidden}.partial", f"{hidden}.previous")
        )
        self.notes: list[str] = []
        self.moved_aside = False  # the server refused posix-rename: the old file went aside first
        self.size = 0  # of the final file on the server, once put

    def call(self, operation: str, path: str, action: Callable[[], Any], shown: str = "") -> Any:
        """One SFTP request; a refusal becomes RemoteRefused naming it and the file."""
        try:
            return action()
        except OSError as error:
            reason = refusal(error)
            if reason is None or (operation == "OPEN" and reason == "no such file"):
                raise  # a network failure, or a remote directory that is not there: sftp_failure names it
            raise RemoteRefused(operation, path, reason, shown) from None

    def exists(self, path: str) -> Any:
        """The path's attributes on the server, or None if nothing is there."""
        try:
            return self.session.lstat(path)
        except FileNotFoundError:
            return None

    def rename(self, old: str, new: str) -> None:
        self.call("RENAME", old, lambda: self.session.rename(old, new), f"{old} -> {new}")

    def remove(self, path: str) -> None:
        self.call("REMOVE", path, lambda: self.session.remove(path))

    def no_room(self, what: str) -> SftpError:
        sftp = self.session.sftp
        return SftpError(
            f"SFTP server {sftp.host}:{sftp.port} {what}; free space or raise the quota there, then rerun"
        )

    def put(self, local_path: Path) -> int:
        """Upload to the temporary name, rename over the final one, check the size;
        the final file's size on the server.

        Only the operations needed: a leftover at the temporary name is removed
        if one is there (or, if the server refuses, a fresh name is used); the
        file is created exclusively (a planted link is never written through)
        with its mode in the same request; a chmod is sent only if the server
        gave another mode.  Until the final rename, a failure or a stop removes
        the temporary file (after closing it: Windows servers keep an open file).
        The rename, once begun, finishes whatever signal arrives.
        """
        self.restore_previous()
        left = self.remove_leftover()
        if left:  # never a blocked night: tonight's upload goes through a fresh temporary name
            self.partial = f"{self.partial}.{os.urandom(4).hex()}"
            self.notes.append(f"{left} (tonight's upload went through {self.partial})")
        created = False
        try:
            with self.open_partial() as remote:
                created = True
                self.set_mode(remote)
                self.write_all(remote, local_path)
            STOP.check()
            local_size = local_path.stat().st_size
            partial_size = self.session.lstat(self.partial).st_size
            if partial_size != local_size:
                raise self.no_room(
                    f"kept {partial_size} of the {local_size} bytes written in {self.remote_dir} (disk full or quota)"
                )
            final = self.exists(self.final)
            if final is not None and stat.S_ISDIR(final.st_mode):
                raise SftpError(
                    f"the remote path {self.final} is a directory, so nothing was moved; "
                    "remove it on the server or change output.file_name"
                )
            STOP.check()  # the last safe point: once sent, the rename is waited for
            with STOP.deferred_section():
                try:
                    self.rename_over(replacing=final is not None)
                except Terminated as stop:
                    stop.uploaded = None  # cut in the rename: whether it happened is unknown
                    raise
                created = False  # from here the file is tonight's final one
                final = self.verify_final()
        except BaseException as error:
            left = self.remove_partial() if created else None
            if left and isinstance(error, ExportError):
                error.args = (f"{error}; {left}",)  # the one line says which file is left
            elif left:
                LOG.warning("%s", left)
            raise
        if final is not None and (not stat.S_ISREG(final.st_mode) or final.st_size != local_size):
            raise SftpError(
                f"{self.final} on the server is not the {local_size}-byte file just uploaded; "
                "check the server's disk space and rerun"
            )
        self.size = local_size  # or, with final None, renamed into place before the connection went
        return self.size

    def verify_final(self):
        """The final file's attributes after the rename; None, with a note, if the
        server cannot say any more (the rename was answered: tonight's file is there)."""
        try:
            return self.session.lstat(self.final)
        except (Exception, Terminated) as error:  # a dropped connection, the importer took the file, a stop
            self.notes.append(
                f"tonight's file was renamed into place, but its size could not be checked ({foreign_text(error, 80)})"
            )
            return None

    def open_partial(self):
        """The temporary file, created exclusively with its mode in the OPEN request.
        A server that creates the file and then refuses to set the mode it was asked
        for (ProFTPD's <Limit SITE_CHMOD> DenyAll) gets a plain OPEN instead: the
        mode is then asked for, and reported, by set_mode."""
        try:
            return self.call(
                "OPEN", self.partial, lambda: self.session.open_exclusive(self.partial, self.mode)
            )
        except RemoteRefused as error:
            if error.reason != "permission denied" or self.exists(self.partial) is None:
                raise
        self.remove(self.partial)
        return self.call("OPEN", self.partial, lambda: self.session.open_exclusive(self.partial, None))

    def write_all(self, remote, local_path: Path) -> None:
        """The file's bytes, a block at a time, with a safe point between blocks.
        Not pipelined: paramiko drops a Failure answer to a pipelined write, and a
        refused block in the middle would leave a hole the size check cannot see."""
        written = 0
        with open(local_path, "rb") as local:
            while chunk := local.read(UPLOAD_CHUNK):
                STOP.check()
                try:
                    remote.write(chunk)
                except OSError as error:
                    if (reason := refusal(error)) is None:
                        raise
                    raise self.no_room(
                        f"refused the write of {local_path.stat().st_size} bytes to {self.partial} after "
                        f"{written} bytes ({reason})"
                    ) from None
                written += len(chunk)

    def set_mode(self, remote) -> None:
        """chmod only if OPEN gave another mode; a refusal is a note naming the mode the file has."""
        mode = self.mode
        with contextlib.suppress(OSError):
            given = remote.stat().st_mode
            if given is not None and stat.S_IMODE(given) == mode:
                return
        try:
            self.call("SETSTAT", self.partial, lambda: remote.chmod(mode))
            return
        except RemoteRefused as error:
            refused = f"the server refused chmod {mode:o} on {self.partial} ({error.reason})"
        try:
            has = stat.S_IMODE(remote.stat().st_mode or 0)
        except OSError:
            self.notes.append(f"{refused}; its mode is unknown")
            return
        wider = ", wider than asked: others may read student data" if has & ~mode else ""
        self.notes.append(f"{refused}; the file has mode {has:03o}{wider}")

    def remove_leftover(self) -> str:
        """The temporary files earlier runs left (a connection cut mid-upload; a fresh name
        taken past one the server would not delete) removed, as the night and --check do;
        what to tell the admin of those the server refuses to remove."""
        folder, base = posixpath.split(self.partial)
        try:
            names = [name for name in self.session.listdir(folder) if name.split(".partial")[0] == base[:-8]]
        except OSError:  # a server that refuses listing: the fixed name alone
            names = [base] if self.exists(self.partial) is not None else []
        left = []
        for path in sorted(posixpath.join(folder, name) for name in names if ".partial" in name):
            try:
                self.remove(path)
            except RemoteRefused as error:
                left.append(f"{error}; {path}, left by an earlier run, holds student data: delete it there")
        return "; ".join(left)

    def remove_partial(self) -> str | None:
        """A failed or stopped upload leaves no copy of student data behind, if the
        connection allows; what is left, if its removal was refused."""
        try:
            with STOP.deferred_section():  # after a stop too: a copy of student data left is worse
                if self.exists(self.partial) is not None:
                    self.remove(self.partial)
        except RemoteRefused as error:
            return (
                f"the temporary file {self.partial} is left on the server (its removal was refused: "
                f"{error.reason}); delete it there"
            )
        except Exception:  # the connection is gone: the next run removes it
            return None
        return None

    def rename_over(self, replacing: bool) -> None:
        """Put the temporary file at the final name: posix-rename, or where the server
        refuses it, move the old file aside (a dot-name the importer never reads)
        first (a refused cleanup goes to the notes)."""
        try:
            self.session.posix_rename(self.partial, self.final)
            return
        except OSError as error:
            if refusal(error) in (None, "no such file"):
                raise
        self.moved_aside = True
        if not replacing:
            self.rename(self.partial, self.final)
            return
        if self.exists(self.previous) is not None:
            self.remove(self.previous)
        self.rename(self.final, self.previous)
        try:
            self.rename(self.partial, self.final)
        except BaseException:
            with contextlib.suppress(OSError, EOFError):
                self.session.rename(self.previous, self.final)  # last night's file back
            raise
        try:
            self.remove(self.previous)
        except RemoteRefused as error:
            self.notes.append(f"tonight's file is in place, but {error}; delete {self.previous} there")

    def restore_previous(self) -> None:
        """A swap cut short (a killed run, a lost server) left no final file but the
        moved-aside one: put it back before anything else."""
        if self.exists(self.final) is not None or self.exists(self.previous) is None:
            return
        self.rename(self.previous, self.final)
        self.notes.append(
            f"{self.final} was missing after an interrupted swap; last night's file was put back from {self.previous}"
        )

    def leftovers(self, moved_aside: bool, night_running: bool) -> list[str]:
        """--check on the real files: a swap cut short, and leftovers in the folder.
        A leftover moved-aside file is in the way of a night that must move the old
        file aside (no posix-rename): it is removed here as the night would, and a
        refusal fails --check with the night's own message."""
        notes = []
        if self.exists(self.previous) is not None:
            if self.exists(self.final) is None:
                notes.append(
                    f"{self.final} is missing after an interrupted swap; the next run puts {self.previous} back"
                )
            elif moved_aside:
                self.remove(self.previous)
                notes.append(f"{self.previous} was left from an earlier run; removed, as the next run would")
            else:
                notes.append(
                    f"{self.previous} is left from an earlier run (its delete was refused); delete it there"
                )
        if night_running:  # its upload may be under way: --check touches none of its files
            notes.append(f"a run holds the lock, so {self.remote_dir}'s temporary files were left alone")
        elif left := self.remove_leftover():
            notes.append(f"{left} (the night uploads through another temporary name)")
        return notes


def upload(
    local_path: Path, sftp: SftpSettings, login: SftpLogin, profile: Profile, retry: RetryPolicy
) -> RemoteFile:
    """Upload with retries for network failures (never after a stop, never for a refusal)."""
    for attempt in range(1, retry.attempts + 1):
        STOP.check()
        try:
            session = open_sftp(sftp, login)
            try:
                remote = RemoteFile(session, profile.remote_dir, profile.file_name, profile.remote_mode)
                remote.put(local_path)
                return remote
            except BaseException as error:
                raise sftp_failure(error, sftp, login.known, remote_dir=profile.remote_dir) from None
            finally:
                session.disconnect()
        except TransientSftpError as error:
            STOP.check()
            if attempt == retry.attempts:
                raise SftpError(f"{error} (gave up after {retry.attempts} attempts)") from None
            wait = retry.wait * 2 ** (attempt - 1)
            LOG.warning(
                "upload attempt %d of %d failed: %s; retrying in %gs", attempt, retry.attempts, error, wait
            )
            until = time.monotonic() + wait
            while not STOP.wake.wait(POLL_SECONDS) and time.monotonic() < until:
                pass  # in slices: on Windows a signal's handler runs only between waits
        except ExportError:
            STOP.check()  # a stop that cut the connection is the outcome, not the cut
            raise
    raise AssertionError("unreachable")  # pragma: no cover


PROBE_NAME = ".clever_export_check.txt"  # --check's file: no student data, a dot-name the importer skips


def probe_remote_dir(session, sftp: SftpSettings, profile: Profile, night_running: bool) -> list[str]:
    """--check: the night's exact remote sequence on a probe file holding no
    student data (create with the mode, write, chmod if needed, rename over an
    existing file, with the fallback), the probe removed, then the real files
    looked at as the night will find them; returns warnings."""
    remote_dir, mode = profile.remote_dir, profile.remote_mode
    first, over = (RemoteFile(session, remote_dir, PROBE_NAME, mode) for _ in range(2))
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"clever_export --check: a probe file, no student data\n")
        try:
            first.put(probe)
            over.put(probe)  # over an existing file
            try:
                over.remove(over.final)
            except RemoteRefused as error:
                over.notes.append(
                    f"{error}; the probe file {over.final} is left (a night does not need to delete it)"
                )
            night = RemoteFile(session, remote_dir, profile.file_name, mode)
            notes = first.notes + over.notes + night.leftovers(over.moved_aside, night_running)
        except BaseException as error:
            failure = sftp_failure(error, sftp, remote_dir=remote_dir)
            with contextlib.suppress(Exception):
                if isinstance(failure, ExportError) and over.exists(over.final) is not None:
                    failure.args = (
                        f"{failure}; the probe file {over.final} (no student data) is left: delete it there",
                    )
            raise failure from None
    return list(dict.fromkeys(notes))


def fetch_host_key(sftp: SftpSettings):
    """The key the server offers, fetched without logging in or trusting it."""
    offered: dict[str, list[str]] = {}
    try:
        session = SftpSession(None, sftp, None, open_socket(sftp))
        transport = offer_keeping_transport(session.sock, offered)
        try:
            session.run(transport.start_client, "key exchange")
            return transport.get_remote_server_key()
        finally:
            transport.close()
    except BaseException as error:
        raise sftp_failure(error, sftp, offered=offered) from None


# =============================================================================
# Run: prepare -> export -> publish, under a lock, logged and monitored
# =============================================================================


class RunLock:
    """One run at a time: an OS-level lock, which the OS releases if a run dies.

    A nightly run waits a few seconds for it, so a --status that looks at the
    lock at that very moment never turns the night away."""

    WAIT_SECONDS = 2.0

    def __init__(self, path: Path, wait: float = WAIT_SECONDS):
        import filelock

        self._lock = filelock.FileLock(str(path), timeout=wait, mode=OWNER_ONLY)
        self._timeout_error = filelock.Timeout
        self.path = path

    def __enter__(self) -> RunLock:
        make_folder(self.path, "--lock-file")
        try:
            self._lock.acquire()
        except self._timeout_error:
            raise LockedError(
                f"another clever_export run holds {self.path}; this run did nothing. "
                "If runs overlap every night, schedule them further apart"
            ) from None
        except OSError as error:
            raise unusable(f"cannot open lock file {self.path}", self.path, error, "--lock-file") from None
        with contextlib.suppress(OSError):
            narrow_to_owner(self.path)
        return self

    def __exit__(self, *exc_info) -> None:
        self._lock.release()

    @classmethod
    def held(cls, path: Path) -> bool:
        """Whether a run holds the lock now (Linux and Windows alike; a PID can be reused)."""
        if not path.exists():
            return False
        try:
            with cls(path, wait=0):
                return False
        except LockedError:
            return True
        except ExportError:
            return False


class RecentLines(logging.Handler):
    """The run-level lines for the failure ping: never a student's line."""

    def __init__(self, size: int = 40):
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(record, "report", False):  # the --dry-run report's codes stay off the ping
            self.lines.append(self.format(record))


class OneLine(logging.Formatter):
    """stderr gets one line per problem; tracebacks stay in the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname}: {escape_text(record.getMessage())}"


class LogLine(logging.Formatter):
    """One event, one log line: control characters in database text are escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_text(record.message)
        return super().formatMessage(record)


class OwnerOnlyLog(logging.handlers.RotatingFileHandler):
    """The rotated log, mode 600 (it may hold per-student lines), that never
    lets a failed write print the record (and a student's line) on stderr."""

    def _open(self):
        descriptor = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, OWNER_ONLY)
        narrow_to_owner(self.baseFilename, descriptor)
        return open(descriptor, "a", encoding=self.encoding, errors="backslashreplace")

    def handleError(self, record: logging.LogRecord) -> None:
        if not getattr(self, "_warned", False):
            self._warned = True
            error = sys.exc_info()[1]
            reason = getattr(error, "strerror", None) or type(error).__name__
            with contextlib.suppress(Exception):
                sys.stderr.write(
                    f"WARNING: cannot write the log file {self.baseFilename} ({reason}); the run goes on\n"
                )


def escape_unencodable_output() -> None:
    """A Windows console or a redirected Task Scheduler stream may not be UTF-8:
    what it cannot show (a name, a path) is escaped rather than a failure."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def setup_logging(log_path: Path, verbose: bool, quiet: bool) -> RecentLines:
    close_logging()
    LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    LOG.propagate = False
    FILE_LOG.setLevel(logging.DEBUG if verbose else logging.INFO)
    FILE_LOG.propagate = False
    try:
        make_owner_only_folders(log_path.parent)
        log_file = OwnerOnlyLog(log_path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    except OSError as error:
        raise unusable(f"cannot write log file {log_path}", log_path, error, "--log-file") from None
    for backup in range(1, LOG_BACKUPS + 1):  # rotated copies an older version left wider
        with contextlib.suppress(OSError):
            narrow_to_owner(f"{log_path}.{backup}")
    log_file.setFormatter(LogLine("%(asctime)s %(levelname)s %(message)s"))
    recent = RecentLines()
    recent.setFormatter(LogLine("%(asctime)s %(levelname)s %(message)s"))
    errors = logging.StreamHandler(sys.stderr)
    # --quiet: a warning the run recovered from (a retried upload) stays in the log.
    errors.setLevel(logging.ERROR if quiet else logging.WARNING)
    errors.setFormatter(OneLine())
    handlers: list[logging.Handler] = [log_file, recent, errors]
    if not quiet:
        progress = logging.StreamHandler(sys.stdout)
        progress.setLevel(logging.INFO)
        progress.addFilter(lambda record: record.levelno < logging.WARNING)
        progress.setFormatter(LogLine("%(message)s"))
        handlers.append(progress)
    redact_tracebacks = RedactTracebacks()
    for handler in handlers:
        handler.addFilter(redact_tracebacks)
        LOG.addHandler(handler)
    FILE_LOG.addHandler(log_file)
    # paramiko logs its own tracebacks, and Apprise a target's URL (even from a thread
    # left behind by a deadline): keep both out of stderr (cron mail) and our log.
    for name in ("paramiko", "apprise"):
        library_log = logging.getLogger(name)
        if not any(isinstance(handler, logging.NullHandler) for handler in library_log.handlers):
            library_log.addHandler(logging.NullHandler())
        library_log.propagate = False
    return recent


def log_is_open() -> bool:
    """Whether setup_logging has run: before it, a failure's line goes straight to stderr."""
    return any(isinstance(handler, OwnerOnlyLog) for handler in FILE_LOG.handlers)


def close_logging() -> None:
    for logger in (LOG, FILE_LOG):
        for handler in list(logger.handlers):
            with contextlib.suppress(Exception):  # a full disk: handleError already warned once
                handler.close()
            logger.removeHandler(handler)
        # Without a log, a line goes nowhere: never to stderr by logging's last resort.
        logger.addHandler(logging.NullHandler())


def ping_host(url: str) -> str:
    """What the log may say of a ping URL: its host (the path is a credential)."""
    try:
        return urllib.parse.urlsplit(url).hostname or "the ping URL"
    except ValueError:
        return "the ping URL"


def ping(
    url: str | None, suffix: str, body: str, timeout: float, stoppable: bool = True, warn=LOG.warning
) -> None:
    """Healthchecks-style ping, bounded; a monitoring outage must not fail the export."""
    if not url or (suffix and is_heartbeat(url)):
        return
    try:
        request = (
            urllib.request.Request(url)  # a heartbeat: a GET, as given
            if is_heartbeat(url)
            else urllib.request.Request(
                url.rstrip("/") + suffix, data=body.encode("utf-8", "replace"), method="POST"
            )
        )
        bounded(
            lambda: urllib.request.urlopen(request, timeout=timeout).close(),
            f"the monitoring ping to {ping_host(url)}", timeout, stoppable=stoppable,
        )  # fmt: skip
    except TimeoutError as error:
        (FILE_LOG.warning if STOP.signum is not None else warn)("%s", error)
    except Exception as error:
        reason = getattr(error, "reason", None) or getattr(error, "code", None) or type(error).__name__
        warn("monitoring ping to %s failed (%s)", ping_host(url), escape_text(reason))


def notify_targets(settings: Settings) -> list[str]:
    """CLEVER_NOTIFY's Apprise URLs (space-separated, or one per env-file line)."""
    return settings.values.get("CLEVER_NOTIFY", "").split()


# Apprise schemes whose host part is a server's address; for the others (pbul://,
# ifttt://, pover://...) the "host" is a token, a credential, and is never shown.
# ntfy's short form ntfys://TOPIC puts the topic, its only secret, where a host goes.
ADDRESS_SCHEMES = frozenset(
    scheme + secure
    for scheme in ("mailto", "json", "xml", "form", "http", "workflow")
    for secure in ("", "s")
)


def target_shown(url: str) -> str:
    """What may be shown of a notification URL: its scheme, and its host where
    that is a server's address (the rest holds credentials)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if not scheme:
        return "a URL without ://"
    shown = f"{escape_text(scheme)[:20]}://"
    try:
        parts = urllib.parse.urlsplit(url)
        where = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:  # a malformed address or port: say less
        return shown + "?"
    # A token for a host, or a host not told apart from a password with certainty (an unencoded
    # @, /, ? or # in it puts an "@" after the host part, or leaves user:password as the host): "…".
    if (
        scheme not in ADDRESS_SCHEMES
        or "@" in parts.path + parts.fragment
        or parts.netloc.count("@") > 1
        or ("@" in url and "@" not in parts.netloc and ":" in parts.netloc)
    ):
        return shown + "…"
    return shown + escape_text(where)[:80]


def notify(options: RunOptions, code: int, message: str, test: bool = False) -> bool:
    """Send a run-level notification through Apprise to every CLEVER_NOTIFY target.

    It carries the exit code and its meaning, the one-line message and the
    host; never a student's data, a secret or a URL.  The targets are sent to
    at once, each bounded by --timeout.  A failed notification is a WARNING
    (after a failure: in the log only) and never changes the run's exit code.
    """
    targets = notify_targets(options.settings)
    if not targets:
        return False
    # After a failure or a stop, its one line stays the only one on stderr: a failed alert goes to the log.
    warn = FILE_LOG.warning if code != EXIT_OK and not test else LOG.warning
    try:
        apprise = import_apprise()
    except ConfigError as error:
        warn("%s", error)
        return False
    host = socket.gethostname()
    verdict = "test" if test else "succeeded" if code == EXIT_OK else "FAILED"
    title = f"clever_export {verdict} on {host}"
    body = f"{title}: exit {code} ({EXIT_CODES.get(code, 'unknown')})\n{message}"
    sent: dict[str, Any] = {}  # each target -> True, False, or what went wrong

    def send(url: str) -> None:
        # No thread pool of Apprise's own: its threads would hold the process open at exit.
        sender = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False, service_timeout=0))
        if not sender.add(url):
            sent[url] = "Apprise does not understand it; fix the URL"
            return
        try:
            sent[url] = bounded(
                lambda: bool(sender.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT)),
                f"the alert to {target_shown(url)}", options.timeout, stoppable=False,
            )  # fmt: skip
        except TimeoutError as error:
            sent[url] = str(error)
        except Exception as error:
            sent[url] = type(error).__name__

    together(*(functools.partial(send, url) for url in targets))
    warn = FILE_LOG.warning if STOP.signum is not None else warn
    for url, outcome in sent.items():
        if outcome is False:
            warn("notification to %s failed", target_shown(url))
        elif outcome is not True:
            warn("notification to %s failed (%s)", target_shown(url), outcome)
    return all(outcome is True for outcome in sent.values())


def open_source(options: RunOptions, database: DatabaseSettings | None) -> Database:
    if options.source == "demo":
        return Database(connect_demo(), options.timeout)
    if options.source == "sqlite":
        return Database(connect_sqlite(options.sqlite_path), options.timeout)
    return Database(connect_oracle(database, options.timeout), options.timeout)


def describe_source(options: RunOptions, database: DatabaseSettings | None) -> str:
    if options.source == "oracle":
        return redact(f"Oracle {database.dsn} as {database.user}")
    return "demo data" if options.source == "demo" else f"SQLite {options.sqlite_path}"


def table_exists(database: Database, table: str) -> bool:
    try:
        probe_table(database, table)
    except DatabaseError:
        return False
    return True


class Prepared(NamedTuple):
    """What a run checked before touching the database."""

    database: DatabaseSettings | None
    sftp: SftpSettings | None
    login: SftpLogin | None
    sent: SentCopy | None  # the previous upload's copy, when tonight checks its import


class SentCopy(NamedTuple):
    path: Path
    columns: tuple[str, ...]  # as it was written: a profile may change between nights


def run_export(options: RunOptions, state: State, record: RunRecord) -> Summary:
    """The run itself: prepare, export, and for a nightly run publish."""
    started = time.monotonic()
    prepared = prepare(options, state)
    LOG.info(
        "export started: profile %s, %s", options.profile.name, describe_source(options, prepared.database)
    )
    mapper = export(options, prepared)
    summary = mapper.summary
    record.students, record.bytes = summary.written, options.output_path.stat().st_size
    if options.mode is Mode.DRY_RUN:
        shown = (
            state.last_import_check.describe() if state.last_import_check else "last import check: none yet"
        )
        for line in [*summary.report().splitlines(), f"  {shown}"]:
            LOG.info("%s", line, extra={"report": True})  # one log line per report line
    if options.mode is Mode.NIGHTLY:
        publish(options, prepared, state, mapper, record)
    LOG.info("%s", summary.line(time.monotonic() - started))
    return summary


def prepare(options: RunOptions, state: State) -> Prepared:
    """Every setting read and checked, and the login key loaded, before the database is touched."""
    values = options.settings.values
    database = database_settings(values) if options.source == "oracle" else None
    sftp = login = None
    if options.mode is Mode.NIGHTLY:
        sftp = sftp_settings(values, options.known_hosts_path, options.timeout)
        login = prepare_login(sftp)
    if options.changed_only and not options.profile.can_compare():
        raise ConfigError("--changed-only needs current_values.table in the profile")
    for path in (options.output_path, options.state_path, options.sent_copy_path):
        remove_stale_temporaries(path)
    return Prepared(database, sftp, login, plan_import_check(options, state))


def export(options: RunOptions, prepared: Prepared) -> StudentMapper:
    """The one query, mapped and written to the local file."""
    profile, sent, dry_run = options.profile, prepared.sent, options.mode is Mode.DRY_RUN
    source = open_source(options, prepared.database)
    try:
        compare = options.changed_only or (dry_run and profile.can_compare()) or sent is not None
        if compare and not table_exists(source, profile.current_table):
            if options.changed_only:
                raise DatabaseError(
                    f"--changed-only compares with current_values.table {profile.current_table}, "
                    "which cannot be read; check the table name in your profile and the read grant"
                )
            if sent is not None:  # the import check never fails the night
                LOG.info(
                    "import check skipped: current_values.table %s cannot be read", profile.current_table
                )
                sent = None
            if dry_run:
                LOG.warning(
                    "current_values.table %s cannot be read, so the dry run does not compare",
                    profile.current_table,
                )
            compare = False
        mapper = export_pass(source, export_statement(profile, compare), options, sent)
    finally:
        source.close()
    summary = mapper.summary
    LOG.info(
        "wrote %s (%d students, %d bytes)",
        options.output_path,
        summary.written,
        options.output_path.stat().st_size,
    )
    for reason, what in (
        (SKIP_DUPLICATE, "several active rows with different values"),
        (SKIP_FORMS, "rows stored in different forms"),
    ):
        if summary.skipped[reason]:
            LOG.warning(
                "%d student number%s %s and got no line; the log names them",
                summary.skipped[reason], " has" if summary.skipped[reason] == 1 else "s have", what,
            )  # fmt: skip
    return mapper


def export_pass(
    source: Database, statement: ExportStatement, options: RunOptions, sent: SentCopy | None
) -> StudentMapper:
    """Run the statement once and write the file; return the mapper with its counts."""
    profile = options.profile
    mapper = StudentMapper(
        profile, statement, Summary(fields=profile.value_fields(), compared=statement.compares)
    )
    batches = stream_batches(source, statement)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(batches.close)
        if sent is not None:
            sent_file = cleanup.enter_context(open(sent.path, encoding="utf-8", newline="\n"))
            mapper.import_check = ImportCheck(sent_file, sent.columns, profile.value_fields())
        lines = export_lines(until_stopped(batches), mapper, options.changed_only)
        cleanup.callback(lines.close)
        with atomic_file(options.output_path, "--output") as stream:
            if profile.header:
                stream.write("\t".join(profile.columns) + "\n")
            stream.writelines(lines)
            repeated = mapper.repeated_numbers()
            if repeated:
                drop_repeated_numbers(stream, repeated, mapper)
    return mapper


def until_stopped(batches: Iterable[list[tuple]]) -> Iterator[list[tuple]]:
    """The statement's batches, with a safe point between them."""
    for batch in batches:
        STOP.check()
        yield batch


def drop_repeated_numbers(stream, repeated: frozenset[int], mapper: StudentMapper) -> None:
    """Take out the lines of numbers stored in different forms, which did not
    arrive together (a text student_number column: a SQLite trial's case, not
    PowerSchool's): the import would keep whichever line came last."""
    number_at = mapper.profile.columns.index("student_number")
    stream.seek(0)
    kept, dropped = [], {}
    for line in stream:
        number = student_number_text(line.split("\t")[number_at])
        if number is not None and int(number) in repeated:
            dropped.setdefault(number, []).append(line)
        else:
            kept.append(line)
    stream.seek(0)
    stream.truncate()
    stream.writelines(kept)
    summary = mapper.summary
    for number, lines in dropped.items():
        summary.written -= len(lines)
        summary.exported -= len(lines)
        summary.skip(SKIP_FORMS)
        for line in lines:
            for field, value in zip(mapper.fields, _values_of(line, mapper.profile.columns), strict=True):
                summary.values[field][value] -= 1
        FILE_LOG.warning("student %s: %s (%d lines); no line written", number, SKIP_FORMS, len(lines))


def _values_of(line: str, columns: tuple[str, ...]) -> list[str]:
    parts = line.rstrip("\n").split("\t")
    return [part for part, column in zip(parts, columns, strict=True) if column != "student_number"]


def publish(
    options: RunOptions, prepared: Prepared, state: State, mapper: StudentMapper, record: RunRecord
) -> None:
    """The guard, the upload, the state, and the verdict on the previous import."""
    profile, summary, sftp = options.profile, mapper.summary, prepared.sftp
    if options.force:
        state.problem = None  # --force: a state file that cannot be read is rewritten
    else:
        last = state.require().last_upload
        check_guard(summary.exported, last.students if last else None, options.max_drop_percent)
    remote = upload(options.output_path, sftp, prepared.login, profile, options.retry)
    remote_size = remote.size
    for note in remote.notes:
        LOG.warning("%s", note)
    record.remote_path = f"{sftp.host}:{posixpath.join(profile.remote_dir, profile.file_name)}"
    LOG.info("uploaded to %s (%d bytes)", record.remote_path, remote_size)
    record.message = "uploaded"
    previous_upload, failure = state.last_upload, None
    state.last_upload = UploadRecord(
        summary.exported, now_text(), remote_size, record.remote_path, options.changed_only,
        keep_sent_copy(options), list(profile.columns),
    )  # fmt: skip
    if mapper.import_check is not None and previous_upload is not None:
        state.last_import_check, failure = judge_import(
            mapper.import_check, previous_upload, options.import_tolerance_percent
        )
    state.save_or_warn(False, "the upload succeeded, but the state file was not written")
    STOP.check(uploaded=True)  # the state now says what is on the server
    if failure is not None:
        raise failure


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def keep_sent_copy(options: RunOptions) -> str:
    """Keep what was just uploaded beside the state file (mode 600), for
    tomorrow's import check; return its hash ("" if it could not be kept)."""
    try:
        with (
            atomic_file(options.sent_copy_path, "--state-file", binary=True) as copy,
            open(options.output_path, "rb") as source,
        ):
            shutil.copyfileobj(source, copy)
        return sha256_of(options.sent_copy_path)
    except (ConfigError, OSError) as error:
        LOG.warning(
            "the upload succeeded, but its copy for the import check was not kept (%s); fix --state-file, "
            "whose folder holds it", error,
        )  # fmt: skip
        return ""


def plan_import_check(options: RunOptions, state: State) -> SentCopy | None:
    """The previous upload to check tonight, or None (with the reason at INFO)."""
    if (
        options.mode is not Mode.NIGHTLY
        or options.import_deadline_hours <= 0
        or not options.profile.can_compare()
    ):
        return None
    last_upload = state.last_upload
    if state.problem is not None:
        LOG.info("import check skipped: the state file cannot be read")
        return None
    if last_upload is None or not last_upload.sent_sha256:
        LOG.info("import check skipped: no previous upload recorded with its copy")
        return None
    age = hours_since(last_upload.at)
    if age is None or age < options.import_deadline_hours:
        LOG.info(
            "import check skipped: the previous upload is younger than --import-deadline %g hours",
            options.import_deadline_hours,
        )
        return None
    columns = tuple(last_upload.columns or options.profile.columns)  # older state files: tonight's
    if "student_number" not in columns:
        LOG.info("import check skipped: the previous upload's columns have no student_number")
        return None
    try:
        if sha256_of(options.sent_copy_path) != last_upload.sent_sha256:
            LOG.info(
                "import check skipped: %s is not the copy of the previous upload", options.sent_copy_path
            )
            return None
    except OSError:
        LOG.info("import check skipped: %s cannot be read", options.sent_copy_path)
        return None
    return SentCopy(options.sent_copy_path, columns)


def judge_import(
    check: ImportCheck, previous_upload: UploadRecord, tolerance: float
) -> tuple[ImportCheckRecord, ExportError | None]:
    """The check's record for the state file, and the failure to raise, if any."""
    record = ImportCheckRecord(now_text(), previous_upload.at, check.compared, check.differing)
    record.blank_not_applied = dict(check.blank_not_applied)
    if check.example is not None:
        # One student's values: the log file only. Elsewhere, only which field.
        number, field, sent, now = check.example
        record.example = f"{field} differs"
        FILE_LOG.info(
            "import check example: student %s: %s sent %s, PowerSchool has %s",
            number, field, sent or "blank", now or "blank",
        )  # fmt: skip
    if not check.usable:
        LOG.info("import check skipped: the previous upload is not in student_number order")
        record.skipped = "previous upload not in student_number order"
        return record, None
    report_blanks_not_applied(check)
    LOG.info(
        "import check: %d of %d students of the previous upload still differ", check.differing, check.compared
    )
    if check.compared and check.percent_differing() > tolerance:
        return record, ExportError(
            f"PowerSchool has not imported the upload of {shown_time(previous_upload.at)}: "
            f"{check.differing:,} of {check.compared:,} students still differ (the log names an example); "
            "check the AutoComm import (Data Import Manager: the job ran; field delimiter Tab, record "
            "delimiter LF, field order, match on student_number). Tonight's file was uploaded",
            EXIT_NOT_IMPORTED,
        )
    return record, None


def report_blanks_not_applied(check: ImportCheck) -> None:
    """Fields sent blank that PowerSchool still holds: a WARNING, never exit 6 alone."""
    if not check.blank_not_applied:
        return
    counts = ", ".join(f"{field} {count:,}" for field, count in check.blank_not_applied.items())
    LOG.warning(
        "import check: blank not applied: %s student field%s sent blank still hold a value in PowerSchool; "
        "the import may leave a field unchanged for a blank (see docs/mapping.md, Blank values)",
        counts, "" if check.blank_not_applied.total() == 1 else "s",
    )  # fmt: skip
    number, field, now = check.blank_example
    FILE_LOG.info(
        "blank not applied, example: student %s: %s sent blank, PowerSchool has %s",
        number,
        field,
        escape_text(now),
    )


def show_status(state_path: Path, lock_path: Path, max_age_hours: float | None) -> int:
    """--status: the last run, the last upload and the last import check in a few lines.
    The verdict is decided first: the last run's exit code, 143 for a run that was
    killed (it recorded no outcome), 2 when none is recorded yet, and with --max-age
    7 when the last upload is too old (or none was made) and the last run succeeded."""
    state = State.load(state_path)
    if state.problem is not None:
        print(f"status: {state.problem}")
        return state.problem.exit_code  # as a run and --check give for it
    run, upload = state.last_run, state.last_upload
    running = bool(state.running) and RunLock.held(lock_path)
    killed = bool(state.running) and not running
    if killed:
        code = EXIT_TERMINATED
    elif run is None:
        code = EXIT_CONFIG
    else:
        code = run.exit_code if type(run.exit_code) is int and 0 <= run.exit_code <= 255 else EXIT_BUG
    age = hours_since(upload.at) if upload else None
    stale = max_age_hours is not None and (age is None or not -0.25 <= age <= max_age_hours)

    if running:
        print(f"running now: a run started {escape_text(state.running)}")
    if killed:
        print(f"last run: started {escape_text(state.running)} and recorded no outcome: it was killed "
              "(SIGKILL, Task Scheduler's time limit, a reboot, a power cut)")  # fmt: skip
    elif run is None:
        print(f"last run: none recorded in {state_path}")
    else:
        print(f"last run: {escape_text(run.started)} to {escape_text(run.finished or '?')}, exit {code} "
              f"({EXIT_CODES.get(code, 'unknown')})")  # fmt: skip
        if run.message:
            print(f"  {escape_text(run.message)}")
        if run.students is not None:
            print(f"  students written {run.students}, bytes {run.bytes}")
    print(f"last upload: {escape_text(upload.at)}, {upload.students} students, {upload.bytes} bytes to "
          f"{escape_text(upload.remote_path)}" if upload else "last upload: none recorded")  # fmt: skip
    print(state.last_import_check.describe() if state.last_import_check else "last import check: none yet")
    if not stale:
        return code
    shown = (
        "never made" if age is None
        else f"{-age:.1f} hours in the future (check the clock)" if age < -0.25
        else f"made {age:.1f} hours ago"
    )  # fmt: skip
    print(f"the last successful upload was {shown}: --max-age is {max_age_hours:g} hours")
    return EXIT_STALE if code in (EXIT_OK, EXIT_CONFIG) else code


class Checklist:
    """--check's lines: [ ok ], [WARN] or [FAIL] with the reason; the exit code of the first failure."""

    def __init__(self):
        self.first_failure = EXIT_OK

    def __call__(self, label: str, action: Callable[[], Any], warn_only: bool = False) -> Any:
        STOP.check()  # after a stop, no further check starts
        try:
            result = action()
        except ExportError as error:
            print(f"[{'WARN' if warn_only else 'FAIL'}] {label}: {error}")
            if not warn_only:
                self.first_failure = self.first_failure or error.exit_code
            return None
        print(f"[ ok ] {label}")
        return result if result is not None else True

    def skip(self, label: str, reason: str) -> None:
        print(f"[skip] {label} {reason}")


def run_check(options: RunOptions) -> int:
    """--check: one line per check; exit code of the first failure's class."""
    check = Checklist()
    describe_settings(options.settings)
    # The files a nightly run writes: what a run as root, or a full disk, breaks first.
    first = not options.state_path.exists()
    check(f"state file {options.state_path}" + (": none yet (first run)" if first else " readable"),
          lambda: State.load(options.state_path).require())  # fmt: skip
    check(
        f"output folder {options.output_path.parent} writable",
        lambda: probe_folder(options.output_path, "--output"),
    )
    if RunLock.held(options.lock_path):  # tonight's run, say: noted, never waited for
        print(f"[WARN] lock {options.lock_path} is held by a run now; it is usable once that run ends")
    else:
        check(f"lock {options.lock_path} usable", lambda: probe_lock(options.lock_path))
    values = options.settings.values
    database = None
    if options.source == "oracle":
        database = check("database variables set", lambda: database_settings(values))
    if database or options.source != "oracle":
        check_database(check, options, database)
    targets = notify_targets(options.settings)
    if targets:
        check("alert targets (CLEVER_NOTIFY) understood by Apprise", lambda: check_targets(targets))
    if options.ping_url:
        heartbeat = "a heartbeat (a query string): sent on success only; the monitor alerts on silence"
        kind = heartbeat if is_heartbeat(options.ping_url) else "Healthchecks-style: /start, success, /fail"
        print(f"[ ok ] ping URL to {ping_host(options.ping_url)}: {kind}")
    sftp = check(
        "SFTP variables set", lambda: sftp_settings(values, options.known_hosts_path, options.timeout)
    )
    if sftp:
        check_sftp(check, options, sftp)
    print("all checks passed" if check.first_failure == EXIT_OK else "some checks failed")
    return check.first_failure


def import_apprise():
    """Apprise, which sends the alerts: the one place its absence is named."""
    try:
        import apprise
    except ImportError:
        raise ConfigError(
            "CLEVER_NOTIFY is set but Apprise is not installed; run: python -m pip install -r requirements.txt"
        ) from None
    return apprise


def check_targets(targets: list[str]) -> None:
    """--check: every CLEVER_NOTIFY URL is one Apprise can send to."""
    bad = [target_shown(url) for url in targets if not import_apprise().Apprise().add(url)]
    if bad:
        raise ConfigError(
            f"CLEVER_NOTIFY: Apprise does not understand {', '.join(bad)}; fix the URL (see docs/alerts.md)"
        )


def probe_lock(lock_path: Path) -> None:
    """--check: the lock can be taken (one the account cannot open, as after a run
    as root, fails like the night).  A run that took it a moment ago proves it usable."""
    with contextlib.suppress(LockedError), RunLock(lock_path, wait=0):
        return


def check_database(check: Checklist, options: RunOptions, database: DatabaseSettings | None) -> None:
    profile = options.profile
    source = check(
        f"database login ({describe_source(options, database)})", lambda: open_source(options, database)
    )
    if not source:
        return
    try:
        for table in profile.tables_read():
            check(f"table {table} readable", lambda table=table: probe_table(source, table))
        check(
            "nightly query runs",
            lambda: probe_query(source, export_statement(profile, False).sql, "nightly"),
        )
        if profile.can_compare():
            optional = not options.changed_only
            readable = check(
                f"current_values table {profile.current_table} readable",
                lambda: probe_table(source, profile.current_table), warn_only=optional,
            )  # fmt: skip
            if readable:
                check(
                    "comparison query runs (--changed-only, --dry-run)",
                    lambda: probe_query(source, export_statement(profile, True).sql, "comparison"),
                    warn_only=optional,
                )
    finally:
        source.close()


def check_sftp(check: Checklist, options: RunOptions, sftp: SftpSettings) -> None:
    remote_dir = options.profile.remote_dir
    known = check(
        f"known_hosts {options.known_hosts_path} holds {sftp.known_hosts_name}",
        lambda: check_known_hosts(sftp),
    )
    client_key = None
    if sftp.logs_in_with_a_key:
        client_key = check(
            f"SFTP key {sftp.key_file or 'D118_SFTP_KEY'} loads", lambda: load_client_key(sftp)
        )
    if not known or (sftp.logs_in_with_a_key and not client_key):
        check.skip(f"remote directory {remote_dir}", "not checked: the SFTP login cannot be tried")
        return
    opened = check("SFTP login", lambda: open_sftp(sftp, SftpLogin(known, client_key)))
    if not opened:
        check.skip(f"remote directory {remote_dir}", "not checked: login failed")
        return
    session = opened
    try:
        notes = check(
            f"remote directory {remote_dir} writable",
            lambda: probe_remote_dir(session, sftp, options.profile, RunLock.held(options.lock_path)),
        )
        for note in notes if isinstance(notes, list) else []:
            print(f"[WARN] {note}")
    finally:
        session.disconnect()


def describe_settings(settings: Settings) -> None:
    """Where each connection setting came from (never its value), for --check."""
    print(f"settings: {settings.env_file or 'the process environment (no env file)'}")
    for name in sorted(settings.sources):
        print(f"  {name}: from {settings.sources[name]}")
    targets = notify_targets(settings)
    shown = (
        ", ".join(target_shown(url) for url in targets) or "none (set CLEVER_NOTIFY: see README, Monitoring)"
    )
    print(f"notifications: {shown}")
    for warning in settings.warnings:
        print(f"[WARN] {warning}")


def send_test_notification(options: RunOptions) -> int:
    """--notify-test: one test message to every CLEVER_NOTIFY target."""
    targets = notify_targets(options.settings)
    if not targets:
        raise ConfigError(
            "CLEVER_NOTIFY is not set; add an Apprise URL to the env file (see README, Monitoring)"
        )
    sent = notify(options, EXIT_OK, "a test notification from clever_export --notify-test", test=True)
    STOP.check()  # a test cut short by a stop blames no URL
    if not sent:
        raise ConfigError(
            f"the test notification to {', '.join(target_shown(url) for url in targets)} failed; "
            "check the URL, and that this server can reach it"
        )
    LOG.info("test notification sent to %s", ", ".join(target_shown(url) for url in targets))
    return EXIT_OK


def show_host_key(options: RunOptions) -> int:
    sftp = sftp_settings(options.settings.values, options.known_hosts_path, options.timeout, need_login=False)
    key = fetch_host_key(sftp)
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


def epilog() -> str:
    # Task Scheduler shows the last result in hex: each code is given both ways.
    exit_codes = "\n".join(f"  {code:>3}  0x{code:02X}  {meaning}" for code, meaning in EXIT_CODES.items())
    settings = "\n".join(
        f"  {name:<26} {purpose}{' (a secret: never printed or logged)' if secret else ''}"
        for name, (purpose, secret) in SETTINGS.items()
    )
    return f"""\
environment (or KEY=value lines in clever_export.env beside the script, mode 600):
{settings}

exit codes (decimal, then hex as Task Scheduler's "Last Run Result" shows it):
{exit_codes}

examples:
  python clever_export.py --demo               try it on bundled sample data
  python clever_export.py --check              verify the set-up, export nothing
  python clever_export.py --show-host-key      print the server's key for known_hosts
  python clever_export.py                      the nightly run
  python clever_export.py --dry-run            everything but the upload, with a report
  python clever_export.py --status --max-age 26   for monitoring: did last night work?
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise ConfigError(f"{message} (see --help)")


class Flag(NamedTuple):
    """One flag of the command line: a row of FLAGS."""

    group: str
    names: str  # "--quiet", or "-q --quiet"
    metavar: str | None = None  # None: an on/off switch
    type: Callable[[str], Any] = str
    default: Any = None
    range: tuple[float, float] | None = None  # a number's limits, checked before anything runs
    help: str = ""
    action: str | None = None


MODE = "what to do (default: export and upload)"
SOURCE = "source and profile"
FILES = "files (relative paths resolve beside the script)"
SAFETY = "safety and reliability"
OUTPUT = "output"
# The command line, one row a flag: build_parser() makes the parser and --help from it,
# and a test keeps docs/configuration.md's table of flags equal to it.
# fmt: off
FLAGS = (
    Flag(MODE, "--demo", help=f"run on bundled sample data (demo/), write {DEMO_OUTPUT_NAME} beside the script, "
         "upload nothing"),
    Flag(MODE, "--check", help="verify variables, known_hosts, database tables, SFTP login and remote write "
         "access; export nothing"),
    Flag(MODE, "--show-host-key", help="print the SFTP server's key as a known_hosts line with its fingerprint; "
         "trusts nothing"),
    Flag(MODE, "--dry-run", help="everything except the upload, then a report of values, blanks and changes"),
    Flag(MODE, "--no-upload", help="write the file only; needs no SFTP settings"),
    Flag(MODE, "--status", help="print the last run, the last successful upload and the last import check; "
         "exit 0 if the last run succeeded, else its code (exit 2 if no run is recorded yet)"),
    Flag(MODE, "--max-age", "HOURS", float, None, (0, 24 * 366), "with --status: exit 7 if the last successful "
         "upload is older than HOURS"),
    Flag(MODE, "--demo-db", "PATH", Path, help="write the bundled sample data as a SQLite file for --sqlite "
         "trials, then stop"),
    Flag(MODE, "--notify-test", help="send a test notification to every CLEVER_NOTIFY target, then stop"),
    Flag(MODE, "--seal-secrets", help="move every secret of the env file into systemd credentials (as root) "
         "or Windows Credential Manager, then stop (see docs/secrets.md)"),
    Flag(SOURCE, "--sqlite", "PATH", Path, help="read the PowerSchool tables from a SQLite file instead of Oracle"),
    Flag(SOURCE, "--oracle-client", "DIR", help="Oracle Instant Client folder: thick mode, for databases thin "
         "mode cannot reach (same as ORACLE_CLIENT_LIB_DIR)"),
    Flag(SOURCE, "--config", "FILE", Path, help="TOML profile overriding the built-in Illinois one (see examples/)"),
    Flag(SOURCE, "--exclude-name", "NAME", action="append", help="skip students whose first or last name is NAME "
         "(any case, exact); repeatable; replaces the default list, which is TEST"),
    Flag(SOURCE, "--changed-only", help="write only students whose values differ from PowerSchool's current "
         "custom fields"),
    Flag(FILES, "--output", "PATH", Path, help="the local export file (default: raceethnicity.txt beside the "
         "script)"),
    Flag(FILES, "--remote-dir", "DIR", help="remote directory (default: /sftp/clever/)"),
    Flag(FILES, "--remote-mode", "OCTAL", help="mode of the uploaded file (default 600; 640 lets the owner's "
         "group read it)"),
    Flag(FILES, "--env-file", "PATH", Path, help="KEY=value settings file, mode 600 (default: clever_export.env "
         "beside the script, if present)"),
    Flag(FILES, "--lock-file", "PATH", Path, help="the one-run-at-a-time lock (default: clever_export.lock beside "
         "the state file)"),
    Flag(FILES, "--known-hosts", "PATH", Path, DEFAULT_KNOWN_HOSTS, help="OpenSSH known_hosts file holding the "
         "server's key (default: known_hosts beside the script)"),
    Flag(FILES, "--log-file", "PATH", Path, DEFAULT_LOG_FILE, help="appended, rotated log (default: "
         "clever_export.log beside the script)"),
    Flag(FILES, "--state-file", "PATH", Path, DEFAULT_STATE_FILE, help="the last run and the last upload, for the "
         "safety guard, --status and the import check (default: clever_export.state.json beside the script)"),
    Flag(SAFETY, "--max-drop", "PERCENT", float, DEFAULT_MAX_DROP_PERCENT, (0, 100), "refuse to upload if there "
         "are more than PERCENT fewer students than at the last upload (default: %(default)g)"),
    Flag(SAFETY, "--force", help="upload even if the safety guard objects (this run only)"),
    Flag(SAFETY, "--retries", "N", int, DEFAULT_RETRIES, (1, 20), "upload attempts for network failures "
         "(default: %(default)s)"),
    Flag(SAFETY, "--retry-wait", "SECONDS", float, DEFAULT_RETRY_WAIT_SECONDS, (0, 3600), "wait before the 2nd "
         "attempt, doubling after (default: %(default)g)"),
    Flag(SAFETY, "--timeout", "SECONDS", float, DEFAULT_TIMEOUT_SECONDS, (0.1, 3600), "wall-clock limit of each "
         "call to the database, the SFTP server, an alert target or the ping (default: %(default)g)"),
    Flag(SAFETY, "--import-deadline", "HOURS", float, DEFAULT_IMPORT_DEADLINE_HOURS, (0, 24 * 366), "check that "
         "PowerSchool imported the previous upload once it is older than HOURS, fractions allowed such as 0.5 "
         "(default: %(default)g; 0 turns the check off)"),
    Flag(SAFETY, "--import-tolerance", "PERCENT", float, DEFAULT_IMPORT_TOLERANCE_PERCENT, (0, 100), "exit 6 when "
         "more than PERCENT of the previous upload's students still differ (default: %(default)g)"),
    Flag(SAFETY, "--ping-url", "URL", help="Healthchecks-style monitoring: URL/start, URL on success, URL/fail, "
         "with the run-level log lines (never a student's)"),
    Flag(SAFETY, "--notify-success", help="also notify the CLEVER_NOTIFY targets when the run succeeds (failures "
         "always notify)"),
    Flag(OUTPUT, "-v --verbose", help="log how each student's values were mapped (log file only)"),
    Flag(OUTPUT, "-q --quiet", help="print nothing on success, even after a retried upload (errors still go to "
         "stderr)"),
)
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clever_export.py",
        # The manual's first page is the module docstring (absent under python -OO).
        # Its last part (exit codes, how the code reads) is for readers of the source.
        description=(__doc__ or "Nightly PowerSchool -> Clever race, ethnicity and ELL export.").partition(
            "\nExit codes: see --help"
        )[0],
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --dry is not --dry-run: a scheduled task's typo must fail, not guess
    )
    groups = {name: parser.add_argument_group(name) for name in dict.fromkeys(flag.group for flag in FLAGS)}
    for flag in FLAGS:
        names, options = flag.names.split(), {"help": flag.help, "default": flag.default}
        if flag.metavar is None:
            options["action"] = "store_true"
        else:
            kind = number_within(flag.type, names[-1], *flag.range) if flag.range else flag.type
            options.update(metavar=flag.metavar, type=kind, action=flag.action)
        groups[flag.group].add_argument(*names, **options)
    groups[OUTPUT].add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def number_within(kind: Callable[[str], float], flag: str, low: float, high: float) -> Callable[[str], float]:
    """A flag's number type: refused (exit 2) when it is not one, nan, inf or out of its range."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(f"{flag} must be a number from {low:g} to {high:g}, not {text!r}")
        return value

    return parse


def check_ping_url(url: str) -> None:
    """A ping URL urllib can send, or exit 2: a mistyped one would fail every night
    in silence (the log's warning only).  Never echoed: its path is a credential."""
    try:
        parts = urllib.parse.urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        usable = usable and not (parts.username or parts.password or "#" in url or url.endswith("?"))
    except ValueError:  # a port that is not a number
        usable = False
    if not usable or any(character.isspace() for character in url):
        raise ConfigError(
            "--ping-url must be a whole http:// or https:// URL without # or user@, such as "
            "https://hc-ping.com/<your check's UUID>"
        )


def is_heartbeat(url: str) -> bool:
    """A URL with a query string (Uptime Kuma's push URL, Cronitor's ?state=complete) is a
    heartbeat: /start and /fail cannot go after its query, so it is sent, as given, on
    success only; the monitor alerts on the silence of a failed night."""
    return bool(urllib.parse.urlsplit(url).query)


def mode_of(args: argparse.Namespace) -> Mode:
    """What this run does: one mode per run (Mode's order decides between the flags given)."""
    given = [mode for mode in Mode if mode.given(args)]
    exclusive = [mode.value for mode in given if not mode.exports or mode is Mode.DEMO]
    if len(exclusive) > 1:
        raise ConfigError(f"choose one of {' and '.join(exclusive)}")
    if args.demo and args.sqlite:
        raise ConfigError("--demo uses its own sample data; leave out --sqlite")
    if args.max_age is not None and not args.status:
        raise ConfigError("--max-age goes with --status")
    if args.ping_url is not None:
        check_ping_url(args.ping_url)
    return given[0]


def resolve_options(args: argparse.Namespace, mode: Mode, environ: dict[str, str]) -> RunOptions:
    """Flags, env file and profile resolved into one RunOptions, each checked once.

    Where a flag repeats a setting (--remote-dir, --remote-mode and
    --exclude-name a profile key; --oracle-client ORACLE_CLIENT_LIB_DIR), the
    flag overrides it for this run, here and nowhere else.
    """
    settings = read_settings(args.env_file, environ)
    if args.oracle_client:
        settings = settings.override("ORACLE_CLIENT_LIB_DIR", args.oracle_client, "--oracle-client")
    profile = load_profile(beside_script(args.config) if args.config else None)
    overrides: dict[str, Any] = {}
    if args.remote_dir is not None:
        overrides["remote_dir"] = args.remote_dir
    if args.exclude_name is not None:
        overrides["exclude_names"] = tuple(args.exclude_name)
    if args.remote_mode is not None:
        overrides["remote_mode"] = parse_mode(args.remote_mode, "--remote-mode")
    profile = dataclasses.replace(profile, **overrides)
    validate_profile(profile, "command line" if overrides else "profile")
    check_query_inputs(profile)
    demo = args.demo
    options = RunOptions(
        mode=mode,
        profile=profile,
        settings=settings,
        source="demo" if demo else "sqlite" if args.sqlite else "oracle",
        sqlite_path=beside_script(args.sqlite) if args.sqlite else None,
        output_path=beside_script(args.output or (DEMO_OUTPUT_NAME if demo else profile.file_name)),
        known_hosts_path=beside_script(args.known_hosts),
        state_path=beside_script(args.state_file),
        lock_path=lock_path_of(args),
        log_path=beside_script(args.log_file),
        changed_only=args.changed_only,
        force=args.force,
        max_drop_percent=args.max_drop,
        timeout=args.timeout,
        retry=RetryPolicy(args.retries, args.retry_wait),
        import_deadline_hours=args.import_deadline,
        import_tolerance_percent=args.import_tolerance,
        ping_url=args.ping_url,
        notify_success=args.notify_success,
        verbose=args.verbose,
        quiet=args.quiet,
    )
    check_own_files(options, args)
    return options


def lock_path_of(args: argparse.Namespace) -> Path:
    return (
        beside_script(args.lock_file)
        if args.lock_file
        else beside_script(args.state_file).parent / LOCK_FILE_NAME
    )


def check_own_files(options: RunOptions, args: argparse.Namespace) -> None:
    """The files a run writes are not the files it reads or keeps, nor each other,
    compared as files (a link, '//', or another spelling is the same file)."""
    output_flag = "--output" if args.output else "output.file_name"
    written = {
        output_flag: options.output_path,
        "--state-file": options.state_path,
        "--log-file": options.log_path,
        "--lock-file": options.lock_path,
        "the import check's copy (beside --state-file)": options.sent_copy_path,
        **{
            f"a rotated log ({options.log_path.name}.{n})": Path(f"{options.log_path}.{n}")
            for n in range(1, LOG_BACKUPS + 1)
        },
    }
    key_file = options.settings.values.get("D118_SFTP_KEY_FILE", "").strip()
    kept = {
        "the script": beside_script(Path(__file__).resolve().name),  # run by any link's name
        "--known-hosts": options.known_hosts_path,
        "the env file": options.settings.env_file,
        "the env file's default name": beside_script(DEFAULT_ENV_FILE),  # protected before it exists
        "--config": beside_script(args.config) if args.config else None,
        "--sqlite": options.sqlite_path,
        "D118_SFTP_KEY_FILE": beside_script(key_file) if key_file else None,
        "requirements.txt": beside_script("requirements.txt"),
        "the demo data": beside_script(DEMO_SEED_FILE),
    }
    for flag, path in written.items():
        check_writable_path(flag, path)
    flags = list(written.items())
    for at, (flag, path) in enumerate(flags):
        for other, other_path in flags[at + 1 :]:
            if same_file(path, other_path):
                raise ConfigError(f"{flag} and {other} are the same file {path}; give each its own")
        for what, kept_path in kept.items():
            if kept_path is not None and same_file(path, kept_path):
                raise ConfigError(
                    f"{flag} {path} is {what}, which the run would overwrite; choose another path"
                )


def check_writable_path(flag: str, path: Path) -> None:
    """A path the run writes: a regular file or nothing yet, in folders (the log
    may also be /dev/null, never another device: /dev/stderr would carry student lines)."""
    try:
        if flag == "--log-file" and path.is_dir():
            raise ConfigError(
                f"--log-file {path} is a folder; give a file path such as {path / 'clever_export.log'}"
            )
        # Replaced by rename: a device or folder there (--output /dev/null as root) would be destroyed.
        if (
            path.exists()
            and not path.is_file()
            and not (flag == "--log-file" and same_file(path, Path(os.devnull)))
        ):
            raise ConfigError(f"{flag} {path} exists and is not a regular file; choose a file path")
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"{flag} {path} cannot be created: {parent} is a file, not a folder")
    except OSError as error:  # a folder the account cannot enter, a name too long
        raise unusable(f"{flag} {path} cannot be reached", path, error, flag) from None


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: resolved (links, '..', '//'), and by identity where both exist."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def write_demo_db(path: Path) -> int:
    """--demo-db: the sample data as a SQLite file (mode 600), for --sqlite trials."""
    if path.exists() or same_file(path, beside_script(DEFAULT_ENV_FILE)):
        raise ConfigError(f"{path} already exists or is the env file's name; choose another --demo-db path")
    source = connect_demo()
    try:
        make_folder(path, "--demo-db")
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_ONLY))
        narrow_to_owner(path)
        target = sqlite3.connect(path)
        source.backup(target)
        target.close()
    except (sqlite3.Error, OSError) as error:
        raise ConfigError(f"cannot write {path}: {foreign_text(error)}") from None
    finally:
        source.close()
    # The interpreter (the venv's, with the dependencies) and script that ran: pastes from any folder.
    command = [
        sys.executable,
        str(beside_script(Path(__file__).resolve().name)),
        "--sqlite",
        str(path),
        "--no-upload",
    ]
    print(f"wrote the demo data to {path}; try: {shell_command(command)}")
    return EXIT_OK


def shell_command(words: list[str]) -> str:
    """A command quoted for pasting into this platform's shell (cmd/PowerShell or sh)."""
    if os.name == "nt":
        import subprocess

        return subprocess.list2cmdline(words)
    return shlex.join(words)


# The modes that look at the set-up and change nothing: run once the log is open.
CHECKS = {Mode.CHECK: run_check, Mode.SHOW_HOST_KEY: show_host_key, Mode.NOTIFY_TEST: send_test_notification}

# --- main: the one place failures become exit codes ----------------------------


class Outcome(NamedTuple):
    code: int
    message: str  # the one line on stderr, in the log, the ping and --status
    alert: bool = True  # a fail ping and notification (not for a run the lock turned away)
    traceback: bool = False  # a bug: the log keeps the traceback


def failure_outcome(error: BaseException) -> Outcome:
    """Every failure's exit code, message and whether it alerts: the one policy."""
    if isinstance(error, ExportError):
        return Outcome(error.exit_code, str(error), alert=not isinstance(error, LockedError))
    if isinstance(error, (KeyboardInterrupt, Terminated)):
        interrupted = isinstance(error, KeyboardInterrupt) or error.signum == signal.SIGINT
        how = "interrupted (Ctrl-C)" if interrupted else "terminated (SIGTERM)"
        uploaded = getattr(error, "uploaded", False)
        return Outcome(
            EXIT_INTERRUPTED if interrupted else EXIT_TERMINATED,
            f"{how} after tonight's file was uploaded and recorded"
            if uploaded
            else f"{how}; nothing was uploaded after the stop"
            if uploaded is False
            else f"{how} while the server renamed tonight's file into place, which did not answer in time: "
            "whether tonight's or last night's file is there is unknown (--check tells, and the next run "
            "puts last night's back if the final name is empty)",
        )
    if isinstance(error, OSError) and error.filename is not None and error.errno is not None:
        return Outcome(  # a path the account cannot reach, a name too long: the set-up, not a bug
            EXIT_CONFIG,
            f"cannot use {escape_text(error.filename)} ({foreign_text(error.strerror or '')}); the account "
            "that runs the job needs access to it and its folder (check the paths in the flags and the env file)",
        )
    if isinstance(error, ModuleNotFoundError):
        return Outcome(
            EXIT_CONFIG,
            f"the Python module {error.name} is missing; run the script with the venv's python, or "
            "install the requirements: python -m pip install -r requirements.txt",
        )
    return Outcome(
        EXIT_BUG,
        f"unexpected error: {type(error).__name__}: {foreign_text(error)} "
        "(a bug: the log has the traceback; please report it)",
        traceback=True,
    )


class Invocation:
    """One call of main(): what the failure path and the run record need to know."""

    def __init__(self, environ: dict[str, str], stack: contextlib.ExitStack):
        self.environ, self.stack = environ, stack
        self.args: argparse.Namespace | None = None
        self.mode: Mode | None = None
        self.options: RunOptions | None = None
        self.recent: RecentLines | None = None
        self.lock: RunLock | None = None
        self.state: State | None = None
        self.record: RunRecord | None = None  # a nightly run's, for --status
        self.summary: Summary | None = None  # an export's, once it is written
        self.outcome: Outcome | None = None  # a failure's

    def run(self, argv: list[str] | None) -> int:
        self.args = args = build_parser().parse_args(argv)
        self.mode = mode = mode_of(args)
        if mode is Mode.STATUS:
            return show_status(beside_script(args.state_file), lock_path_of(args), args.max_age)
        if mode is not Mode.SEAL_SECRETS:  # which runs as root, and gives the env file back to its owner
            refuse_root_in_anothers_folder(beside_script(args.state_file))
        if mode is Mode.NIGHTLY:
            self.record = RunRecord(started=now_text())  # for --status, whatever stops the run
        if mode is Mode.DEMO_DB:
            return write_demo_db(beside_script(args.demo_db))
        self.options = options = resolve_options(args, mode, self.environ)
        if mode is Mode.SEAL_SECRETS:  # before the log: a run as root leaves no file of root's
            return seal_secrets(options)
        self.recent = setup_logging(options.log_path, options.verbose, options.quiet)
        if mode in CHECKS:
            return CHECKS[mode](options)
        # From here the run holds the lock: a run refused by it touches nothing,
        # and the state file is only ever written by the lock's holder.
        self.lock = self.stack.enter_context(RunLock(options.lock_path))
        self.state = State.load(options.state_path)
        if options.mode is Mode.NIGHTLY and isinstance(self.state.problem, ConfigError):
            raise self.state.problem  # another account's file: the night cannot record what it sends
        if self.record is not None:
            self.state.running = self.record.started
            self.state.save_or_warn(True, "could not record this run for --status")
        ping(options.ping_url, "/start", "", options.timeout)
        self.summary = run_export(options, self.state, self.record or RunRecord(started=now_text()))
        return EXIT_OK

    def fail(self, error: BaseException) -> int:
        self.outcome = outcome = failure_outcome(error)
        if log_is_open():
            LOG.error("%s", outcome.message, exc_info=outcome.traceback)
        else:  # logging not set up yet (a bad flag, an unwritable log)
            print(f"ERROR: {escape_text(outcome.message)}", file=sys.stderr)
        if self.record is not None:
            self.record.message = escape_text(outcome.message)[:500]
        return outcome.code

    def report(self, code: int) -> None:
        """The ping and the alerts, after the outcome is recorded (so --status tells
        the truth whatever they do): sent together, each bounded by --timeout, and
        after a stop within what is left of STOP_SECONDS."""
        if self.mode is None or not self.mode.exports:
            return
        options, args = self.options, self.args
        lines = "\n".join(self.recent.lines) if self.recent else ""
        if code == EXIT_OK and self.summary is not None:
            calls = [lambda: ping(options.ping_url, "", lines, args.timeout, stoppable=False)]
            if options.notify_success:
                calls.append(lambda: notify(options, EXIT_OK, self.summary.line(0).rpartition(",")[0]))
        elif self.outcome is not None and self.outcome.alert:
            message = self.outcome.message
            ping_url = options.ping_url if options else args.ping_url
            calls = [lambda: ping(ping_url, "/fail", lines or message, args.timeout, False, FILE_LOG.warning)]
            if options is not None:
                calls.append(lambda: notify(options, code, message))
        else:
            return
        together(*calls)

    def finish(self, code: int) -> None:
        """Record a nightly run's outcome for --status: never a locked-out run's, and a
        failed run's even where this account cannot open the lock."""
        if self.record is None or code == EXIT_LOCKED:
            return
        options = self.options
        if self.lock is None:  # failed before taking it (a setting): take it to record
            try:
                lock_path = options.lock_path if options else lock_path_of(self.args)
                self.lock = self.stack.enter_context(RunLock(lock_path))
            except LockedError:
                return  # another run holds it, and records its own night
            except Exception:
                pass  # a lock this account cannot open: the failure is recorded all the same (atomically)
        try:
            state = self.state or State.load(
                options.state_path if options else beside_script(self.args.state_file)
            )
        except Exception:  # a state path the account cannot reach: the failure's own line said so
            return
        self.record.finished, self.record.exit_code = now_text(), code
        self.record.message = self.record.message or (
            "succeeded" if code == EXIT_OK else EXIT_CODES.get(code, "")
        )
        state.last_run, state.running = self.record, ""
        state.save_or_warn(code != EXIT_OK, "could not record this run for --status")


@contextlib.contextmanager
def unraisable_to_log() -> Iterator[None]:
    """An error in a destructor (paramiko's SFTPFile after a cut connection) goes to
    the log file, not to stderr as "Exception ignored in ...": the run's one line stays one."""
    previous = sys.unraisablehook

    def to_log(unraisable) -> None:
        FILE_LOG.debug("ignored in %r: %s", unraisable.object, unraisable.exc_value)

    sys.unraisablehook = to_log
    try:
        yield
    finally:
        sys.unraisablehook = previous


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Run the command line; return the exit code."""
    _SECRETS.clear()  # this run's secrets only
    STOP.__init__()  # this run's stop request only
    _BOMLESS_COPIES.clear()  # this run's tnsnames copies only (each is removed when dropped)
    escape_unencodable_output()
    with contextlib.ExitStack() as stack:
        stack.callback(close_logging)
        stack.enter_context(STOP.handling_signals())
        for signum in globals().get("_EARLY_STOPS", [])[:1]:  # one that came while the script loaded
            STOP.request(signum)
        stack.enter_context(unraisable_to_log())
        invocation = Invocation(dict(os.environ if environ is None else environ), stack)
        try:
            code = invocation.run(argv)
            STOP.check(uploaded=bool(invocation.record and invocation.record.remote_path))
        except SystemExit as exit_request:  # --help and --version
            return int(exit_request.code or 0)
        except BrokenPipeError:  # --status | head: the reader left; nothing to report
            with contextlib.suppress(OSError):
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the interpreter's final flush)
            return EXIT_OK
        except BaseException as error:
            code = invocation.fail(error)
        invocation.finish(code)
        invocation.report(code)
        return code


if __name__ == "__main__":
    sys.exit(main())
