"""The source: one portable statement per run, against PowerSchool-shaped SQLite."""

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    EXAMPLES,
    ORACLE_ENV,
    REPO,
    SECRET_DB_PASSWORD,
    Student,
    closed_port,
    many_students,
    one_line,
    run_main,
    warnings_in,
)
from conftest import clever_export as ce


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


def export(tmp_path, *args):
    """An in-process run that writes tmp_path/out.txt and uploads nothing; returns the file's text."""
    assert run_main(tmp_path, *args, "--no-upload", "-q") == 0, (tmp_path / "run.log").read_text()
    return (tmp_path / "out.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("extra", [[], ["--changed-only"], ["--dry-run"]])
def test_one_query_per_run_whatever_the_student_count(db, tmp_path, traced_sqlite, extra):
    compare = bool(extra)
    # A comparing run first proves the current-values table readable (no rows), then reads once.
    expected = ["SELECT * FROM u_def_ext_students0 WHERE 1 = 0"] if compare else []
    expected.append(ce.export_statement(ce.Profile(), compare).sql)
    for count in (1, 40, 12_000):
        traced_sqlite.clear()
        text = export(tmp_path, "--sqlite", str(db(many_students(count))), *extra)
        if not extra:
            assert len(text.splitlines()) == count
        assert traced_sqlite == expected


def test_duplicate_extension_rows_neither_duplicate_nor_drop_a_student(db, tmp_path):
    students = [Student(1, fer=[16, 16], lep=[0, 1]), Student(2, fer=[13, "13.0"], lep=[1, 1]),
                Student(3, current=("N", "W", "N"))]  # fmt: skip
    # Student 1's two S_IL_STU_X rows disagree: ELL blank ("conflicting rows"), never a guess.
    assert export(tmp_path, "--sqlite", str(db(students))) == "1\tN\tW\t\n2\tN\tA\tY\n3\tN\tW\tN\n"


def test_inactive_students_are_not_exported(db, tmp_path):
    students = [Student(status, enroll=status) for status in (-1, 0, 1, 2, 3, 4)]
    assert export(tmp_path, "--sqlite", str(db(students))) == "0\tN\tW\tN\n"


# --- Test students: flagged by the database, by exact name in any case ---------------


@pytest.mark.parametrize(
    ("first", "last"), [("Test", "Doe"), ("Pat", "TEST"), (" test ", "x"), ("Ann", "tEsT")]
)
def test_test_students_are_skipped_case_insensitively(db, tmp_path, first, last):
    path = str(db([Student(1, first=first, last=last), Student(2)]))
    assert export(tmp_path, "--sqlite", path, "--dry-run") == "2\tN\tW\tN\n"
    log = (tmp_path / "run.log").read_text(encoding="utf-8")
    assert "test-student name: 1" in log and "skipped: student DCID 10001: test-student name" in log


@pytest.mark.parametrize(
    ("first", "last"), [("Testa", "Doe"), ("Pat", "Contest"), ("Tes", "Doe"), (None, None)]
)
def test_exclusion_is_exact_not_a_substring(db, tmp_path, first, last):
    assert export(tmp_path, "--sqlite", str(db([Student(1, first=first, last=last)]))) == "1\tN\tW\tN\n"


def test_exclusion_list_can_be_changed(db, tmp_path):
    path = str(db([Student(1, first="Test"), Student(2, first="SAMPLE"), Student(3, last="dummy ")]))
    assert export(tmp_path, "--sqlite", path, "--exclude-name", "Dummy", "--exclude-name", "Sample") == (
        "1\tN\tW\tN\n"
    )


def test_an_excluded_name_with_a_quote_stays_a_name(db, tmp_path):
    # The list is spelled into the SQL: a quote must not end the string literal.
    path = str(db([Student(1, last="O'Brien"), Student(2, last="x') OR ('1' = '1")]))
    assert export(tmp_path, "--sqlite", path, "--exclude-name", "o'brien") == "2\tN\tW\tN\n"
    assert export(tmp_path, "--sqlite", path, "--exclude-name", "x') OR ('1' = '1") == "1\tN\tW\tN\n"


# --- Portable SQL ------------------------------------------------------------------------


def every_query():
    profiles = [("built-in", ce.Profile())]
    profiles += [(path.name, ce.load_profile(path)) for path in sorted(EXAMPLES.glob("*.toml"))]
    for name, profile in profiles:
        yield f"{name} query", profile.query
        for compare in (False, True):
            yield f"{name} compare={compare}", ce.export_statement(profile, compare).sql


@pytest.mark.parametrize(("name", "query"), list(every_query()))
def test_queries_stay_portable_to_oracle(name, query):
    # Oracle rejects AS before a table alias; vendor functions would not run on SQLite.
    assert not re.search(r"\bAS\b", query, re.IGNORECASE), name
    for vendor in ("NVL", "DECODE", "IFNULL", "LISTAGG", "GROUP_CONCAT", "ROWNUM", "LIMIT", "TOP"):
        assert not re.search(rf"\b{vendor}\b", query, re.IGNORECASE), (name, vendor)


def test_every_example_has_a_query_to_check():
    names = [name for name, _ in every_query()]
    assert len(names) == 3 * (1 + len(list(EXAMPLES.glob("*.toml")))) and len(set(names)) == len(names)


def test_cheap_paths_do_not_import_oracledb_or_paramiko(tmp_path, db):
    sqlite_path = str(db([Student(1)]))
    files = ["--output", str(tmp_path / "o.txt"), "--log-file", str(tmp_path / "l.log"),
             "--state-file", str(tmp_path / "state.json")]  # fmt: skip
    for args in (["--help"], ["--demo", "-q"], ["--no-upload", "--sqlite", sqlite_path, "-q"]):
        probe = (
            "import sys, clever_export as ce\n"
            f"try:\n    code = ce.main({args + files!r})\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('\\nRESULT', code, 'oracledb' in sys.modules, 'paramiko' in sys.modules)"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=30
        )
        assert result.stdout.splitlines()[-1] == "RESULT 0 False False", (args, result.stdout, result.stderr)


def test_studentrace_is_joined_only_when_the_profile_uses_it(db, tmp_path, traced_sqlite):
    path = str(db([Student(1, fedethnicity=1, fer=11, races=("16", "14"))]))  # ISBE codes
    assert export(tmp_path, "--sqlite", path) == "1\tY\t\tN\n"
    assert len(traced_sqlite) == 1 and "studentrace" not in traced_sqlite[0].lower()
    traced_sqlite.clear()
    config = EXAMPLES / "illinois-hispanic-race.toml"
    assert export(tmp_path, "--sqlite", path, "--config", str(config), "--changed-only") == "1\tY\tM\tN\n"
    assert "studentrace" in traced_sqlite[-1].lower()
    assert traced_sqlite[-1] == ce.export_statement(ce.load_profile(config), True).sql


# --- --check ---------------------------------------------------------------------------------


def database_lines(stdout):
    """--check's lines about the database (the SFTP ones fail here: no SFTP settings)."""
    return [line for line in stdout.splitlines() if "SFTP" not in line and "known_hosts" not in line]


def test_check_proves_studentrace_readable_when_it_is_used(app, db):
    path = str(db([Student(1, fedethnicity=1, fer=11, races=("W",))]))
    result = app.run("--check", "--sqlite", path, "--config", str(EXAMPLES / "illinois-hispanic-race.toml"))
    lines = database_lines(result.stdout)
    for table in ("students", "s_il_stu_demographics_x", "s_il_stu_x", "studentrace"):
        assert f"[ ok ] table {table} readable" in lines, result.stdout
    assert "[ ok ] nightly query runs" in lines, result.stdout
    assert "[ ok ] comparison query runs (--changed-only, --dry-run)" in lines, result.stdout
    assert result.returncode == 2  # the SFTP variables are missing, and only they
    assert [line for line in result.stdout.splitlines() if line.startswith("[FAIL]")] == [
        line for line in result.stdout.splitlines() if line.startswith("[FAIL] SFTP variables set")
    ]

    built_in = database_lines(app.run("--check", "--sqlite", path).stdout)
    assert "[ ok ] nightly query runs" in built_in
    assert [line for line in built_in if line.startswith("[ ok ] table ")] == [
        "[ ok ] table students readable",
        "[ ok ] table s_il_stu_demographics_x readable",
        "[ ok ] table s_il_stu_x readable",
    ]
    checks = [line for line in built_in if line.startswith("[") and (" table " in line or " query " in line)]
    assert checks and not any("studentrace" in line.lower() for line in checks)  # (the path names the test)


def test_check_fails_when_studentrace_is_used_but_missing(app, db):
    path = db([Student(1)])
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE studentrace")
    connection.commit()
    connection.close()
    result = app.run(
        "--check", "--sqlite", str(path), "--config", str(EXAMPLES / "illinois-hispanic-race.toml")
    )
    assert result.returncode != 0
    assert "[ ok ] table students readable" in result.stdout
    assert any(line.startswith("[FAIL] table studentrace readable") for line in result.stdout.splitlines())
    assert any(line.startswith("[FAIL] nightly query runs") for line in result.stdout.splitlines())


def test_pre_registered_students_are_exported_when_the_profile_says_so(app, db, tmp_path):
    students = [Student(1, fer=16), Student(2, enroll=-1, fer=14), Student(3, enroll=-1, last="Test", fer=16)]
    path = str(db(students))
    assert app.run("--sqlite", path, "--no-upload").returncode == 0
    assert app.output.read_bytes() == b"1\tN\tW\tN\n"
    config = tmp_path / "pre.toml"
    config.write_text("[students]\nenroll_statuses = [0, -1]\n")
    result = app.run("--sqlite", path, "--no-upload", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert app.output.read_bytes() == b"1\tN\tW\tN\n2\tN\tB\tN\n"  # the test account is still skipped
    assert "written 2, skipped 1" in result.stdout


@pytest.mark.parametrize("statuses", ["[]", "['active']", "[0.5]"])
def test_enroll_statuses_must_be_whole_numbers(app, tmp_path, statuses):
    config = tmp_path / "bad.toml"
    config.write_text(f"[students]\nenroll_statuses = {statuses}\n")
    result = app.run("--demo", "--config", str(config))
    assert result.returncode == 2 and "students.enroll_statuses" in result.stderr, result.stderr


# =============================================================================
# 9. Database messages keep the cause
# =============================================================================


def test_an_oracle_port_that_refuses_keeps_the_driver_code_and_the_cause(app):
    port = closed_port()
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": f"127.0.0.1:{port}/PS"}
    result = app.run("--no-upload", "--timeout", "3", env=env, timeout=60)
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "DPY-6005" in line and "Connection refused" in line
    assert f"127.0.0.1:{port}/PS" in line and "POWERSCHOOL_PROD_DB" in line
    assert SECRET_DB_PASSWORD not in result.everything()
    assert not app.output.exists()


# =============================================================================
# 10. No current-values table
# =============================================================================


def drop_current_values(path: Path) -> Path:
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE u_def_ext_students0")
    connection.commit()
    connection.close()
    return path


def test_dry_run_without_the_current_values_table_warns_and_reports(app, db):
    path = drop_current_values(db([Student(1, fer=16), Student(2, fer=13)]))
    result = app.run("--sqlite", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing uploaded" in result.stdout and "exported students: 2" in result.stdout
    assert any("u_def_ext_students0" in w and "current_values.table" in w for w in warnings_in(result.log))
    assert app.output.read_bytes() == b"1\tN\tW\tN\n2\tN\tA\tN\n"


def test_changed_only_without_the_current_values_table_exits_3(app, db):
    path = drop_current_values(db([Student(1)]))
    result = app.run("--sqlite", str(path), "--no-upload", "--changed-only")
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "current_values.table" in line and "u_def_ext_students0" in line
    assert not app.output.exists()


# =============================================================================
# 11. A profile query ending in ';' or a comment
# =============================================================================

QUERY_BODY = ce.ILLINOIS_QUERY


@pytest.mark.parametrize(
    "ending",
    [
        ";",
        " -- active students only",
        "; -- active students only",
        ";\n-- the end\n\n",
        " ; -- it's 'done'; really",
    ],
    ids=["semicolon", "comment", "semicolon-comment", "comment-line", "quote-in-comment"],
)
def test_a_query_ending_in_a_semicolon_or_comment_works_in_every_mode(app, db, tmp_path, ending):
    students = [
        Student(1, fer=16, current=("N", "W", "N")),
        Student(2, fer=13, lep=1, current=("N", "W", "N")),
        Student(3, fedethnicity=1, fer=11),
    ]
    path = str(db(students))
    config = tmp_path / "district.toml"
    config.write_text(
        f"[students]\nenroll_statuses = [0]\nquery = '''\n{QUERY_BODY}{ending}'''\n", encoding="utf-8"
    )
    baseline = app.run("--sqlite", path, "--no-upload", "--output", "baseline.txt")
    assert baseline.returncode == 0, baseline.stderr
    outputs = {}
    for mode in ("--no-upload", "--dry-run"):
        result = app.run("--sqlite", path, mode, "--config", str(config))
        assert result.returncode == 0, (mode, result.stderr)
        outputs[mode] = app.output.read_bytes()
    assert outputs["--no-upload"] == outputs["--dry-run"] == (app.root / "baseline.txt").read_bytes()
    changed = app.run("--sqlite", path, "--no-upload", "--changed-only", "--config", str(config))
    assert changed.returncode == 0, changed.stderr
    assert app.output.read_bytes() == b"2\tN\tA\tY\n3\tY\t\tN\n"
