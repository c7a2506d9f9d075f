"""Issue 9's rules for values, one by one, end to end on PowerSchool-shaped SQLite:
the exact file bytes, the --dry-run reasons and the summary counts."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path

import pytest
from conftest import EXAMPLES, NO_ROW, Student, run_main
from conftest import clever_export as ce

DUPLICATE = "duplicate student_number with different values"
NO_NUMBER = "no numeric student_number"
FORGED = "2026-01-01 00:00:00 ERROR forged"


@dataclasses.dataclass
class Run:
    code: int
    data: bytes | None  # the output file
    stdout: str
    stderr: str
    log: str

    def counts(self) -> tuple[int, int, int]:
        """(written, skipped, exported) from the summary line on stdout."""
        found = re.findall(
            r"^summary: written (\d+), skipped (\d+), exported (\d+),", self.stdout, re.MULTILINE
        )
        assert len(found) == 1, self.stdout
        return tuple(int(n) for n in found[0])

    def reasons(self) -> dict[str, dict[str, int]]:
        """The --dry-run report's blank reasons per field, and its skip reasons under "skipped"."""
        found: dict[str, dict[str, int]] = {}
        section = None
        for line in self.stdout.splitlines():
            if re.match(r"  \S", line):
                name = line.strip().partition(":")[0]
                section = name if name in (*ce.VALUE_FIELDS, "skipped") else None
                if section:
                    found[section] = {}
            elif section and line.startswith("    "):
                reason, _, count = line.strip().removeprefix("blank, ").rpartition(": ")
                found[section][reason] = int(count)
        assert "skipped" in found, f"no --dry-run report on stdout:\n{self.stdout}"
        return found


@pytest.fixture
def export(tmp_path, capsys):
    """export(database, *args) runs main in this process (--no-upload) in a fresh folder."""
    runs = iter(range(100))

    def run(database: Path, *args: str) -> Run:
        folder = tmp_path / f"run{next(runs)}"
        folder.mkdir()
        capsys.readouterr()
        code = run_main(folder, "--sqlite", str(database), "--no-upload", *args)
        captured = capsys.readouterr()
        output, log = folder / "out.txt", folder / "run.log"
        return Run(
            code,
            output.read_bytes() if output.exists() else None,
            captured.out,
            captured.err,
            log.read_text(encoding="utf-8") if log.exists() else "",
        )

    return run


def write_profile(folder: Path, text: str) -> str:
    path = folder / f"profile{len(list(folder.glob('profile*.toml')))}.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def raw_student_numbers(path: Path, numbers: list) -> Path:
    """Store student_number exactly as given, in STUDENTS rows order (DCID 10001, ...).

    The seed's NUMERIC column would turn '1013.0' or '1e3' into numbers on the
    way in, so the column becomes untyped, as text columns of other databases are.
    """
    connection = sqlite3.connect(path)
    columns = [row[1] for row in connection.execute("PRAGMA table_info(students)")]
    connection.executescript(
        "ALTER TABLE students RENAME TO students_seed;\n"
        "CREATE TABLE students (id INTEGER PRIMARY KEY, dcid INTEGER NOT NULL UNIQUE, student_number,\n"
        "    first_name TEXT, last_name TEXT, enroll_status INTEGER, fedethnicity);\n"
        f"INSERT INTO students ({', '.join(columns)}) SELECT {', '.join(columns)} FROM students_seed;\n"
        "DROP TABLE students_seed;"
    )
    for position, number in enumerate(numbers):
        connection.execute(
            "UPDATE students SET student_number = ? WHERE dcid = ?", (number, 10_001 + position)
        )
    stored = [row[0] for row in connection.execute("SELECT student_number FROM students ORDER BY dcid")]
    connection.commit()
    connection.close()
    assert [(type(n), n) for n in stored[: len(numbers)]] == [(type(n), n) for n in numbers]
    return path


def no_forged_line(text: str) -> bool:
    return not any(line.startswith(FORGED) for line in text.splitlines())


# --- 1. A student is written once ------------------------------------------------------------


def test_1_rows_under_one_student_number_that_agree_give_one_line(db, export):
    students = [Student(1013, fer=16, lep=0), Student(1013, fer="16.0", lep=" 0"), Student(1014)]
    run = export(db(students), "--dry-run")
    assert run.code == 0 and run.data == b"1013\tN\tW\tN\n1014\tN\tW\tN\n"
    assert run.counts() == (2, 0, 2) and run.reasons()["skipped"] == {}
    assert run.stderr == ""


def test_1_rows_under_one_student_number_that_disagree_give_no_line_and_a_logged_warning(db, export):
    students = [Student(1013, fer=16), Student(1013, fer=14), Student(1014)]
    run = export(db(students), "--dry-run")
    assert run.code == 0 and run.data == b"1014\tN\tW\tN\n"
    warnings = [line for line in run.log.splitlines() if " WARNING student 1013:" in line]
    assert len(warnings) == 1 and "10001" in warnings[0] and "10002" in warnings[0], run.log
    # stderr (cron's mail) gets the run-level warning only: no student number, no DCID.
    assert run.stderr.startswith("WARNING: 1 student number has several active rows with different values")
    assert len(run.stderr.splitlines()) == 1
    assert "1013" not in run.stderr + run.stdout and "10001" not in run.stderr + run.stdout
    assert run.counts() == (1, 1, 1)
    assert run.reasons()["skipped"] == {DUPLICATE: 1}
    assert run.reasons()["Race"] == {}  # the skipped students count nowhere else


def test_1_changed_only_keeps_a_disagreeing_duplicate_out(db, export):
    students = [Student(1013, fer=16, current=("N", "W", "N")), Student(1013, fer=14), Student(1014)]
    run = export(db(students), "--changed-only")
    assert run.code == 0 and run.data == b"1014\tN\tW\tN\n"
    assert run.counts() == (1, 1, 1)


# The same number stored in different forms (' 1013 ' and 1013, a text column:
# a SQLite trial's case, since PowerSchool's column is numeric) does not arrive
# as neighbours: those students are found after the pass and get no line.
FORMS = "student_number stored in different forms"


def forms_db(db, numbers, **per_student):
    students = [
        Student(0, **{key: values[i] for key, values in per_student.items()}) for i in range(len(numbers))
    ]
    return raw_student_numbers(db([*students, Student(0)]), [*numbers, 1014])


@pytest.mark.parametrize("races", [[16, 16, 16], [16, 14, 16]], ids=["agreeing", "disagreeing"])
def test_1_one_number_in_different_forms_gets_no_line_and_a_reason(db, export, races):
    run = export(forms_db(db, [1013, " 1013 ", "1013.0"], fer=races), "--dry-run")
    assert run.code == 0 and run.data == b"1014\tN\tW\tN\n"
    assert run.counts() == (1, 1, 1) and run.reasons()["skipped"] == {FORMS: 1}
    assert "  Race: W 1" in run.stdout.splitlines(), run.stdout  # the dropped lines count nowhere
    assert "1013" not in run.stdout + run.stderr and len(run.stderr.splitlines()) == 1
    warnings = [line for line in run.log.splitlines() if " WARNING student 1013:" in line]
    assert len(warnings) == 1 and FORMS in warnings[0], run.log


def test_1_changed_only_keeps_different_forms_out(db, export):
    database = forms_db(db, [1013, " 1013 "], fer=[16, 14], current=[("N", "W", "N"), None])
    run = export(database, "--changed-only")
    assert run.code == 0 and run.data == b"1014\tN\tW\tN\n"


def test_1_a_number_beyond_64_bits_in_different_forms_is_still_one_student(db, export):
    number = "9" * 20
    run = export(forms_db(db, [number, f" {number} "], fer=[16, 14]), "--dry-run")
    assert run.code == 0 and run.data == b"1014\tN\tW\tN\n"
    assert run.reasons()["skipped"] == {FORMS: 1}


# --- 2. STUDENTRACE --------------------------------------------------------------------------

STUDENTRACE_PROFILE = '''
[students]
query = """
SELECT s.id, s.dcid, s.student_number, s.first_name, s.last_name, s.fedethnicity
FROM students s
WHERE s.enroll_status = 0"""
tables = ["students"]

[race]
source = "studentrace"
studentrace_codes = { "W" = "W", "C" = "W", "B" = "B", "X" = "" }

[output]
columns = ["student_number", "Hispanic_Latino", "Race"]
'''


def test_2_race_from_studentrace(db, export, tmp_path):
    students = [
        Student(1, races=("W ",)),  # trimmed: 'W ' is W
        Student(2, races=("X", "B")),  # X maps to "": ignored
        Student(3, races=("W", "C")),  # two district codes for W: one race
        Student(4, races=("W", "B")),  # two races: M
        Student(5, races=("Q",)),  # unknown
        Student(6, races=("W", "B", "Q")),  # two known races already give M
        Student(7, races=()),  # no row
        Student(8, races=("W", "Q")),  # one known race and an unknown one: not known
        Student(9, races=("X",)),  # only an ignored code
    ]
    run = export(db(students), "--dry-run", "--config", write_profile(tmp_path, STUDENTRACE_PROFILE))
    assert run.code == 0, run.stderr
    assert run.data == b"1\tN\tW\n2\tN\tB\n3\tN\tW\n4\tN\tM\n5\tN\t\n6\tN\tM\n7\tN\t\n8\tN\t\n9\tN\t\n"
    assert run.reasons()["Race"] == {
        "unknown RACECD Q": 2,
        "no STUDENTRACE row": 1,
        "RACECD X maps to blank": 1,
    }
    assert "ELL" not in run.reasons()
    assert run.counts() == (9, 0, 9)
    assert "blank Hispanic_Latino 0, blank Race 4, seconds" in run.stdout


# --- 3. ELL ------------------------------------------------------------------------------------


def test_3_ell_from_lep(db, export):
    leps = [-1, 2, "Y", "Yes", None, NO_ROW, 1, 0]
    run = export(db([Student(n, lep=lep) for n, lep in enumerate(leps, 1)]), "--dry-run")
    assert run.code == 0, run.stderr
    assert (
        run.data
        == b"1\tN\tW\t\n2\tN\tW\t\n3\tN\tW\t\n4\tN\tW\t\n5\tN\tW\tN\n6\tN\tW\tN\n7\tN\tW\tY\n8\tN\tW\tN\n"
    )
    assert run.reasons()["ELL"] == {
        "unknown LEP code -1": 1,
        "unknown LEP code 2": 1,
        "unknown LEP code Y": 1,
        "unknown LEP code Yes": 1,
    }
    assert run.counts() == (8, 0, 8) and "blank ELL 4, seconds" in run.stdout


def test_3_a_profile_names_its_own_ell_codes(db, export, tmp_path):
    leps = ["Y", "N", " Y ", None, NO_ROW, 1, 0]
    config = write_profile(tmp_path, '[ell]\nyes = ["Y"]\nno = ["N"]\n')
    run = export(db([Student(n, lep=lep) for n, lep in enumerate(leps, 1)]), "--dry-run", "--config", config)
    assert run.code == 0, run.stderr
    assert run.data == b"1\tN\tW\tY\n2\tN\tW\tN\n3\tN\tW\tY\n4\tN\tW\tN\n5\tN\tW\tN\n6\tN\tW\t\n7\tN\tW\t\n"
    assert run.reasons()["ELL"] == {"unknown LEP code 1": 1, "unknown LEP code 0": 1}


# --- 4. Several extension rows -------------------------------------------------------------------


def test_4_extension_rows_that_disagree_give_blank_and_equal_ones_do_not(db, export):
    students = [
        Student(1, lep=[1, 0]),
        Student(2, fer=[14, 16]),
        Student(3, fer=[16, "16.0"]),
        Student(4, fer=[16, " 16"], lep=[1, "1.0", " 1 "]),
        Student(5, fer=[14, 16], lep=[0, 1]),
    ]
    run = export(db(students), "--dry-run")
    assert run.code == 0, run.stderr
    assert run.data == b"1\tN\tW\t\n2\tN\t\tN\n3\tN\tW\tN\n4\tN\tW\tY\n5\tN\t\t\n"
    reasons = run.reasons()
    assert reasons["Race"] == {"conflicting rows": 2} and reasons["ELL"] == {"conflicting rows": 2}
    assert run.counts() == (5, 0, 5)


# --- 5. Student numbers -------------------------------------------------------------------------


@pytest.mark.parametrize("number", [1013, " 1013 ", "1013.0", 1013.0])
def test_5_a_whole_number_in_any_form_is_a_student_number(db, export, number):
    run = export(raw_student_numbers(db([Student(0)]), [number]), "--dry-run")
    assert run.code == 0 and run.data == b"1013\tN\tW\tN\n"
    assert run.counts() == (1, 0, 1)


@pytest.mark.parametrize("number", [-5, "1e3", "1_000", "²", "١٠١٣", "--7", "1013.5", "", 1013.5])
def test_5_anything_else_is_skipped_with_a_reason(db, export, number):
    run = export(raw_student_numbers(db([Student(0, fer=14), Student(0)]), [number, 1014]), "--dry-run")
    assert run.code == 0 and run.data == b"1014\tN\tW\tN\n"
    assert run.counts() == (1, 1, 1) and run.reasons()["skipped"] == {NO_NUMBER: 1}
    assert "skipped: student DCID 10001: student_number " in run.log
    assert run.stderr == ""


# --- 6. No value hangs or crashes ---------------------------------------------------------------

MONSTERS = ["1e99999999", "1e5000", "NaN", "Infinity", "9" * 5000]


def shown(code: str) -> str:
    """A code as a reason shows it: at most REASON_CODE_LENGTH characters."""
    return code if len(code) <= ce.REASON_CODE_LENGTH else code[: ce.REASON_CODE_LENGTH - 3] + "..."


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", MONSTERS, ids=lambda code: code[:12])
def test_6_a_monstrous_code_is_an_unknown_code(app, db, code):
    students = [
        Student(1, fedethnicity=code),
        Student(2, fer=code),
        Student(3, lep=code),
        Student(4, fedethnicity=1, fer=11, races=(code,)),
    ]
    config = str(EXAMPLES / "illinois-hispanic-race.toml")
    result = app.run("--sqlite", str(db(students)), "--dry-run", "--config", config, timeout=25)
    assert result.returncode == 0, result.stderr
    assert result.seconds < 20
    assert app.output.read_bytes() == b"1\t\tW\tN\n2\tN\t\tN\n3\tN\tW\t\n4\tY\t\tN\n"
    for line in (
        f"    blank, unknown code {shown(code)}: 1",
        f"    blank, unknown RACECD {shown(code)}: 1",
        f"    blank, unknown LEP code {shown(code)}: 1",
    ):
        assert line in result.stdout.splitlines(), result.stdout
    if len(code) > ce.REASON_CODE_LENGTH:  # a reason shows the start of the value, never all of it
        assert code[: ce.REASON_CODE_LENGTH] not in result.stdout + result.stderr + result.log


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", MONSTERS, ids=lambda code: code[:12])
def test_6_a_monstrous_key_in_a_profile_map_is_just_a_code(app, db, tmp_path, code):
    config = write_profile(
        tmp_path,
        f'[race]\nstate_codes = {{ "16" = "W", "{code}" = "B" }}\nstudentrace_codes = {{ "{code}" = "A" }}\n',
    )
    students = [Student(1, fer=code), Student(2, fedethnicity=1, fer=11, races=(code,)), Student(3)]
    result = app.run("--sqlite", str(db(students)), "--no-upload", "--config", config, timeout=25)
    assert result.returncode == 0, result.stderr
    assert result.seconds < 20
    assert app.output.read_bytes() == b"1\tN\tB\tN\n2\tY\tA\tN\n3\tN\tW\tN\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "toml",
    ["[ell]\nyes = [1e99999999]\n", "[ell]\nyes = [nan]\n", "[ell]\nyes = [inf]\n"],
    ids=["1e99999999", "nan", "inf"],
)
def test_6_a_monstrous_number_in_a_profile_is_refused_as_configuration(app, db, tmp_path, toml):
    result = app.run(
        "--sqlite", str(db([Student(1)])), "--no-upload", "--config", write_profile(tmp_path, toml)
    )
    assert result.returncode == 2 and "ell.yes must list strings or whole numbers" in result.stderr
    assert result.seconds < 20


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "toml",
    [f"[ell]\nyes = [{'9' * 5000}]\n", f'[race]\nstate_codes = {{ "16" = {"9" * 5000} }}\n'],
    ids=["list", "map value"],
)
def test_6_a_5000_digit_integer_in_a_profile_is_a_configuration_error(app, db, tmp_path, toml):
    result = app.run(
        "--sqlite", str(db([Student(1)])), "--no-upload", "--config", write_profile(tmp_path, toml)
    )
    assert result.seconds < 20
    assert result.returncode == 2, result.stderr


# --- 7. Names that are not UTF-8 ----------------------------------------------------------------

# (first, last) as bytes no UTF-8 decoder accepts: Latin-1, a cut sequence, an
# overlong slash, bare continuation bytes.  The third student is a test student.
BAD_NAMES = [
    (b"Zo\xeb Quuxley", b"Dur\xc3"),
    (b"\xff\xfe\xfd", b"Mc\xc0\xafWibble"),
    (b"TEST", b"Fl\xe9gmatic\x80"),
]


def with_bad_names(path: Path) -> Path:
    connection = sqlite3.connect(path)
    for dcid, (first, last) in enumerate(BAD_NAMES, 10_001):
        connection.execute(
            f"UPDATE students SET first_name = CAST(x'{first.hex()}' AS TEXT), "
            f"last_name = CAST(x'{last.hex()}' AS TEXT) WHERE dcid = ?",
            (dcid,),
        )
    connection.commit()
    stored = connection.execute(
        "SELECT typeof(first_name), hex(last_name) FROM students ORDER BY dcid"
    ).fetchall()
    with pytest.raises(sqlite3.OperationalError, match="decode"):  # not UTF-8, really
        connection.execute("SELECT first_name FROM students").fetchall()
    connection.close()
    assert stored == [("text", last.hex().upper()) for _, last in BAD_NAMES]
    return path


@pytest.mark.parametrize("extra", [["--no-upload"], ["--dry-run", "-v"]])
def test_7_a_name_that_is_not_utf8_does_not_stop_the_export(app, db, extra):
    database = with_bad_names(db([Student(1), Student(2, fer=13), Student(3)]))
    result = app.run("--sqlite", str(database), *extra)
    assert result.returncode == 0, result.stderr
    assert app.output.read_bytes() == b"1\tN\tW\tN\n2\tN\tA\tN\n"
    assert "skipped: student DCID 10003: test-student name" in result.log
    for fragment in ("Quuxley", "Wibble", "gmatic", "Dur"):
        assert fragment not in result.stderr and fragment not in result.stdout
    assert result.stderr == ""


# --- 8. Database text cannot forge log lines ------------------------------------------------------


@pytest.mark.parametrize(
    ("separator", "escape"), [("\n", "\\x0a"), ("\r", "\\x0d"), ("\u2028", "\\u2028"), ("\x85", "\\x85")]
)
def test_8_a_custom_field_value_cannot_forge_a_log_line(db, export, separator, escape):
    students = [
        Student(1, fer=16, current=("N", f"W{separator}{FORGED}", "N")),
        Student(2, current=("N", "W", "N")),
    ]
    run = export(db(students), "--changed-only")
    assert run.code == 0 and run.data == b"1\tN\tW\tN\n"
    assert no_forged_line(run.log) and no_forged_line(run.stdout) and no_forged_line(run.stderr)
    assert f"student 1: Race W{escape}{FORGED} \u2192 W" in run.log


def test_8_a_dcid_with_a_newline_cannot_forge_a_log_line(db, export):
    database = db([Student(-3), Student(5, fer=16), Student(5, fer=14)])
    connection = sqlite3.connect(database)
    for dcid in (10_001, 10_003):
        connection.execute("UPDATE students SET dcid = ? WHERE dcid = ?", (f"{dcid}\n{FORGED}", dcid))
    connection.commit()
    connection.close()
    run = export(database, "--dry-run", "-v")
    assert run.code == 0 and run.data == b""
    assert no_forged_line(run.log) and no_forged_line(run.stdout) and no_forged_line(run.stderr)
    assert f"skipped: student DCID 10001\\x0a{FORGED}: student_number -3 is not a number" in run.log
    (warning,) = [
        line for line in run.log.splitlines() if " WARNING student 5: 2 active rows (DCIDs " in line
    ]
    assert "10002" in warning and f"10003\\x0a{FORGED}" in warning


def test_8_a_student_number_with_a_newline_cannot_forge_a_log_line(db, export):
    run = export(db([Student(f"3\n{FORGED}"), Student(4)]), "--dry-run", "-v")
    assert run.code == 0 and run.data == b"4\tN\tW\tN\n"
    assert no_forged_line(run.log) and no_forged_line(run.stdout) and no_forged_line(run.stderr)
    # The skip line shows the number's repr, so its newline reads \n (a backslash in data would be doubled).
    assert f"student DCID 10001: student_number '3\\n{FORGED}' is not a number" in run.log


def test_8_a_code_with_a_newline_cannot_forge_a_log_line_through_its_reason(db, export):
    run = export(db([Student(1, fer=f"99\n{FORGED}", lep=f"7\n{FORGED}")]), "--dry-run", "-v")
    assert run.code == 0 and run.data == b"1\tN\t\t\n"
    assert no_forged_line(run.log) and no_forged_line(run.stdout) and no_forged_line(run.stderr)
    reasons = run.reasons()
    assert reasons["Race"] == {f"unknown code 99\\x0a{FORGED}": 1}
    assert reasons["ELL"] == {f"unknown LEP code 7\\x0a{FORGED}": 1}
    assert f"Race blank (unknown code 99\\x0a{FORGED})" in run.log  # the -v line
    assert f"blank, unknown LEP code 7\\x0a{FORGED}: 1" in run.log  # the report, one log line


# --- The demo shows each kind of reason ---------------------------------------------------------


def test_demo_dry_run_lists_a_duplicate_a_conflict_and_an_unknown_lep_code(app):
    result = app.run("--demo", "--dry-run")
    assert result.returncode == 0, result.stderr
    report = Run(result.returncode, None, result.stdout, result.stderr, result.log).reasons()
    assert report["skipped"][DUPLICATE] == 1
    assert report["ELL"]["conflicting rows"] == 1
    assert report["ELL"]["unknown LEP code Y"] == 1
    # The duplicate's number and DCIDs are in the log file, never on stdout or stderr.
    assert "student 1056: 2 active rows (DCIDs 5056, 5057)" in result.log
    assert "1056" not in result.stdout + result.stderr
