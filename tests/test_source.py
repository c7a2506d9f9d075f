"""The source: one portable query per run, against PowerSchool-shaped SQLite."""

import re
import subprocess
import sys

import pytest
from conftest import REPO, Student, many_students
from conftest import clever_export as ce

EXAMPLES = REPO / "examples"


@pytest.fixture
def traced_sqlite(monkeypatch):
    """Every SQL statement the export sends to SQLite, in order."""
    statements: list[str] = []
    connect = ce.connect_sqlite

    def traced(path):
        connection = connect(path)
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr(ce, "connect_sqlite", traced)
    return statements


def run_in_process(tmp_path, monkeypatch, *args):
    monkeypatch.setattr(ce, "DEFAULT_LOCK_FILE", tmp_path / "lock")
    return ce.main([*args, "--no-upload", "-q", "--log-file", str(tmp_path / "log"),
                    "--output", str(tmp_path / "out.txt")], environ={})  # fmt: skip


@pytest.mark.parametrize("extra", [[], ["--changed-only"], ["--dry-run"]])
def test_one_query_per_run_whatever_the_student_count(db, tmp_path, monkeypatch, traced_sqlite, extra):
    for count in (1, 40, 12_000):
        traced_sqlite.clear()
        assert run_in_process(tmp_path, monkeypatch, "--sqlite", str(db(many_students(count))), *extra) == 0
        if not extra:
            assert len((tmp_path / "out.txt").read_text().splitlines()) == count
        assert len(traced_sqlite) == 1, traced_sqlite


def test_duplicate_extension_rows_neither_duplicate_nor_drop_a_student(db, tmp_path, monkeypatch):
    students = [Student(1, fer=[16, 16], lep=[0, 1]), Student(2, fer=[13, 13], lep=[1, 1]),
                Student(3, current=("N", "W", "N"))]  # fmt: skip
    path = str(db(students))
    assert run_in_process(tmp_path, monkeypatch, "--sqlite", path) == 0
    assert (tmp_path / "out.txt").read_text() == "1\tN\tW\tY\n2\tN\tA\tY\n3\tN\tW\tN\n"


def test_inactive_students_are_not_exported(db, tmp_path, monkeypatch):
    students = [Student(status, enroll=status) for status in (-1, 0, 1, 2, 3, 4)]
    assert run_in_process(tmp_path, monkeypatch, "--sqlite", str(db(students))) == 0
    assert (tmp_path / "out.txt").read_text() == "0\tN\tW\tN\n"


def every_query():
    yield "built-in", ce.ILLINOIS_QUERY
    for path in sorted(EXAMPLES.glob("*.toml")):
        yield path.name, ce.load_profile(path).query
    profile = ce.Profile()
    yield "changed-only wrapper", ce.export_query(profile, with_current_values=True)


@pytest.mark.parametrize(("name", "query"), list(every_query()))
def test_queries_stay_portable_to_oracle(name, query):
    # Oracle rejects AS before a table alias; vendor functions would not run on SQLite.
    assert not re.search(r"\bAS\b", query, re.IGNORECASE), name
    for vendor in ("NVL", "DECODE", "IFNULL", "LISTAGG", "GROUP_CONCAT", "ROWNUM", "LIMIT", "TOP"):
        assert not re.search(rf"\b{vendor}\b", query, re.IGNORECASE), (name, vendor)


def test_cheap_paths_do_not_import_oracledb_or_paramiko(tmp_path, db):
    sqlite_path = str(db([Student(1)]))
    for args in (["--help"], ["--demo", "-q"], ["--no-upload", "--sqlite", sqlite_path, "-q"]):
        probe = (
            "import sys, clever_export as ce\n"
            f"try:\n    code = ce.main({args!r} + ['--output', {str(tmp_path / 'o.txt')!r}, "
            f"'--log-file', {str(tmp_path / 'l.log')!r}])\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('\\nRESULT', code, 'oracledb' in sys.modules, 'paramiko' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30
        )
        assert result.stdout.splitlines()[-1] == "RESULT 0 False False", (args, result.stdout, result.stderr)


def test_studentrace_is_joined_only_when_the_profile_uses_it(db, tmp_path, monkeypatch, traced_sqlite):
    path = str(db([Student(1, fedethnicity=1, fer=11, races=("W", "B"))]))
    assert run_in_process(tmp_path, monkeypatch, "--sqlite", path) == 0
    assert len(traced_sqlite) == 1 and "studentrace" not in traced_sqlite[0].lower()
    assert (tmp_path / "out.txt").read_text() == "1\tY\t\tN\n"
    traced_sqlite.clear()
    config = str(EXAMPLES / "illinois-hispanic-race.toml")
    assert run_in_process(tmp_path, monkeypatch, "--sqlite", path, "--config", config, "--changed-only") == 0
    assert len(traced_sqlite) == 1 and "studentrace" in traced_sqlite[0].lower()
    assert (tmp_path / "out.txt").read_text() == "1\tY\tM\tN\n"


def test_check_proves_studentrace_readable_when_it_is_used():
    assert "studentrace" not in ce.Profile().tables_read()
    assert ce.load_profile(EXAMPLES / "illinois-hispanic-race.toml").tables_read()[-1] == "studentrace"
