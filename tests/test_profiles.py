"""Profiles (--config), race from STUDENTRACE, --changed-only and --dry-run."""

import json

import pytest
from conftest import REPO, Student
from conftest import clever_export as ce

EXAMPLES = REPO / "examples"


def lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_the_illinois_example_is_exactly_the_built_in_profile():
    assert ce.load_profile(EXAMPLES / "illinois.toml") == ce.Profile()


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_loads_and_runs_on_the_demo_data(app, example):
    result = app.run("--demo", "--config", str(EXAMPLES / example))
    assert result.returncode == 0, result.stderr
    by_number = {line.split("\t")[0]: line for line in lines(app.root / ce.DEMO_OUTPUT_NAME)}
    # What each example is for: FER 15 is P everywhere; a Hispanic student (1007,
    # STUDENTRACE 16, the ISBE code for White) has a race only where the Illinois
    # RACECD map is given.  The demo holds ISBE codes, so the generic letter map
    # of studentrace.toml finds none of them: blank, never a guess.
    expected = {
        "illinois.toml": ["1005\tN\tP\tN", "1006\tN\tM\tN", "1007\tY\t\tY"],
        "illinois-hispanic-race.toml": ["1005\tN\tP\tN", "1006\tN\tM\tN", "1007\tY\tW\tY"],
        "studentrace.toml": ["1005\tN\t", "1006\tN\t", "1007\tY\t"],
    }[example]
    assert [by_number[line.split("\t")[0]] for line in expected] == expected


def test_state_independent_profile_end_to_end(app, db):
    students = [
        Student(1, fedethnicity=1, fer=11, races=("W",)),  # Hispanic and White
        Student(2, fedethnicity=0, races=("B", "A")),  # two races
        Student(3, fedethnicity=-1, races=()),  # nothing known
        Student(4, fedethnicity=0, races=("P", "P")),  # the same race twice is one race
        Student(5, races=("Q",)),  # a code the district did not map
    ]
    for student in students:
        student.fer = 16  # state tables are ignored by this profile
    result = app.run("--sqlite", str(db(students)), "--no-upload", "--config", str(EXAMPLES / "studentrace.toml"),
                     "--output", "out.txt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (app.root / "out.txt").read_bytes() == b"1\tY\tW\n2\tN\tM\n3\t\t\n4\tN\tP\n5\tN\t\n"


def test_hispanic_student_gets_race_from_studentrace(app, db):
    students = [  # the ISBE race codes Illinois districts keep in STUDENTRACE.RACECD
        Student(1, fedethnicity=1, fer=11, races=("16",)),
        Student(2, fedethnicity=1, fer=11, races=("16", "12")),
        Student(3, fedethnicity=0, fer=13, races=("16",)),  # FER wins for non-Hispanic students
        Student(4, fedethnicity=1, fer=11),  # no STUDENTRACE row
    ]
    path = str(db(students))
    result = app.run(
        "--sqlite", path, "--no-upload", "--config", str(EXAMPLES / "illinois-hispanic-race.toml")
    )
    assert result.returncode == 0, result.stderr
    assert lines(app.output) == ["1\tY\tW\tN", "2\tY\tM\tN", "3\tN\tA\tN", "4\tY\t\tN"]
    assert app.run("--sqlite", path, "--no-upload").returncode == 0  # without the map: blank, not a guess
    assert lines(app.output)[:2] == ["1\tY\t\tN", "2\tY\t\tN"]


CURRENT = [
    Student(1, fer=16, current=("N", "W", "N")),
    Student(2, fer=17, current=("N", "W", "N")),  # race changed
    Student(3, fer=13, lep=1, current=("N", "A", "N")),  # became an English learner
    Student(4, fer=16),  # no row yet
    Student(5, fer=16, first="Test", current=("Y", "B", "N")),  # test student: never written
]


def test_changed_only_writes_exactly_the_differing_students(app, db):
    result = app.run("--sqlite", str(db(CURRENT)), "--no-upload", "--changed-only")
    assert result.returncode == 0, result.stderr
    assert lines(app.output) == ["2\tN\tM\tN", "3\tN\tA\tY", "4\tN\tW\tN"]
    assert "student 2: Race W \u2192 M" in result.log
    assert "student 3: ELL N \u2192 Y" in result.log
    assert "written 3, skipped 1, exported 4, changed 3" in result.log


def test_changed_only_writes_nothing_when_nothing_changed(app, db):
    same = [Student(1, fer=16, current=("N", "W", "N")), Student(2, fer=14, current=("N", "B", "N"))]
    result = app.run("--sqlite", str(db(same)), "--no-upload", "--changed-only")
    assert result.returncode == 0, result.stderr
    assert app.output.read_bytes() == b""
    assert "written 0, skipped 0, exported 2, changed 0" in result.log


def test_changed_only_guard_counts_every_active_student(uploading_app, sftp_server, db):
    students = [Student(n, fer=16, current=("N", "W", "N")) for n in range(1, 51)]
    students[0].fer = 14
    (uploading_app.root / "clever_export.state.json").write_text(
        json.dumps({"last_upload": {"students": 50}})
    )
    result = uploading_app.run("--sqlite", str(db(students)), "--changed-only", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == b"1\tN\tB\tN\n"
    state = json.loads((uploading_app.root / "clever_export.state.json").read_text())
    assert state["last_upload"]["students"] == 50


def test_dry_run_reports_and_uploads_nothing(uploading_app, sftp_server, db):
    students = [*CURRENT, Student(6, fedethnicity=-1, fer=99), Student(7, fedethnicity=None, fer=11)]
    result = uploading_app.run("--sqlite", str(db(students)), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert sftp_server.connections == 0 and not sftp_server.remote().exists()
    report = result.stdout
    assert "exported students: 6" in report
    assert "Hispanic_Latino: blank 2, N 4" in report
    assert "blank, unanswered (-1): 1" in report and "blank, no value: 1" in report
    assert "blank, unknown code 99: 1" in report and "carries no race" in report
    assert "ELL: N 5, Y 1" in report
    assert "would change: 5 of 6" in report
    assert len(lines(uploading_app.output)) == 6  # the file is written for inspection


def write_config(tmp_path, text):
    path = tmp_path / "profile.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[racee]\nsource = 'state'\n", "unknown section [racee]"),
        ("[race]\nsorce = 'state'\n", "unknown key race.sorce"),
        ("[output]\nheader = 'yes'\n", "output.header must be a true/false, not str"),
        ("[race]\nstate_codes = { '16' = 'White' }\n", 'race.state_codes."16" = "WHITE" is not a Clever race'),
        ("[race]\nstudentrace_codes = { 'W' = 'X' }\n", 'race.studentrace_codes."W" = "X" is not a Clever race'),
        ("[students]\nquery = 'SELECT dcid, student_number, first_name, last_name, fedethnicity, "
         "state_race FROM students'\n", "students.query does not return the column lep"),
        ("[race]\nsource = 'federal'\n", 'race.source must be "state" or "studentrace"'),
        ("[race]\nsource = 'studentrace'\n", "needs race.studentrace_codes"),
        ("[output]\ncolumns = ['student_number', 'Gender']\n", "output.columns must name each of"),
        ("[output]\ncolumns = ['Race', 'ELL']\n", "must include student_number"),
        ("[output]\ncolumns = ['student_number']\n", "and at least one of Hispanic_Latino, Race, ELL"),
        ("[output]\nremote_dir = 'sftp/clever'\n", "output.remote_dir must be an absolute path"),
        ("[current_values]\ntable = 'u_def; DROP TABLE students'\n", "is not a plain table or column name"),
        ("[hispanic]\nyes = [1]\nno = ['1']\n", "hispanic.yes and hispanic.no both list"),
        ("[race\n", "is not valid TOML"),
        (f'[students]\nquery = """{ce.ILLINOIS_QUERY}"""\n', "no WHERE and students.enroll_statuses is not set"),
    ],
)  # fmt: skip
def test_bad_profiles_exit_2_naming_the_key(app, tmp_path, toml, message):
    result = app.run("--demo", "--config", str(write_config(tmp_path, toml)))
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (app.root / ce.DEMO_OUTPUT_NAME).exists()  # validated before anything ran


def test_missing_config_file_exits_2(app, tmp_path):
    result = app.run("--demo", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr


def test_a_query_that_returns_too_few_columns_at_run_time_exits_3_naming_it(app, tmp_path):
    # The word check passes (the names appear), but the select list lacks lep.
    toml = ("[students]\nquery = \"SELECT dcid, student_number, first_name, last_name, fedethnicity, "
            "fedethnicity state_race FROM students WHERE 'lep' = 'lep'\"\n")  # fmt: skip
    result = app.run("--demo", "--config", str(write_config(tmp_path, toml)))
    assert result.returncode == 3 and "no such column: q.lep" in result.stderr


def test_profile_sets_file_name_columns_and_header(app, db, tmp_path):
    toml = "[output]\nfile_name = 'clever.tsv'\ncolumns = ['student_number', 'ELL', 'Race']\nheader = true\n"
    result = app.run("--sqlite", str(db([Student(7, fer=12, lep=1)])), "--no-upload",
                     "--config", str(write_config(tmp_path, toml)))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert lines(app.root / "clever.tsv") == ["student_number\tELL\tRace", "7\tY\tI"]


def test_changed_only_with_nothing_changed_uploads_an_empty_file(uploading_app, sftp_server, db):
    sftp_server.remote().write_bytes(b"1\tN\tB\tN\n")  # yesterday's change, already imported
    same = [Student(n, fer=16, current=("N", "W", "N")) for n in range(1, 4)]
    result = uploading_app.run("--sqlite", str(db(same)), "--changed-only", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == b""


def test_two_spellings_of_one_code_with_different_letters_are_refused(app, tmp_path):
    toml = '[race]\nstate_codes = { "16" = "W", "16.0" = "B" }\n'
    result = app.run("--demo", "--config", str(write_config(tmp_path, toml)))
    assert result.returncode == 2 and "race.state_codes" in result.stderr and "twice" in result.stderr


def test_a_profile_saved_with_a_byte_order_mark_loads(app, tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[profile]\nname = 'Notepad'\n".encode())
    result = app.run("--demo", "--config", str(path))
    assert result.returncode == 0, result.stderr and "Notepad" in result.stdout
