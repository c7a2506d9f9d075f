"""The exact statements of every mode and every example profile, proven on a
strict server database (PostgreSQL) as well as SQLite, byte for byte.

PostgreSQL is a test engine only: it rejects what Oracle rejects and SQLite
forgives (loose typing, mixed-type comparisons, bare columns outside GROUP BY).
The rows run through the export's own streaming and mapping code.
"""

import sqlite3

import pytest
from conftest import EXAMPLES, NO_ROW, Student, make_db
from conftest import clever_export as ce

pytest_plugins = ["pg"]

# Oracle's shapes: NUMBER as int/Decimal, codes as text with spaces, '' for NULL,
# two rows where one is expected, several races, a duplicate student_number.
STUDENTS = [
    Student(1001, fedethnicity=0, fer=16, lep=0, races=("W",), current=("N", "W", "N")),
    Student(1002, fedethnicity=1, fer=11, lep=1, races=("W", "B"), current=("Y", "", "Y")),
    Student(1003, fedethnicity=-1, fer=15, lep=NO_ROW, races=("P",)),
    Student(1004, fedethnicity=None, fer=NO_ROW, lep=None, races=()),
    Student(1005, fedethnicity=0, fer=[14, 16], lep=[1, 0], races=("B", "W ")),
    Student(1006, fedethnicity=0, fer=[13, 13], lep=[1, 1], races=("A",)),
    Student(1007, first="Test", fedethnicity=0, fer=16, lep=0),
    Student(1008, fedethnicity=0, fer=16, lep=2, races=("X",)),
    Student(1009, fedethnicity=0, fer=12, lep=0, races=("I",)),
    Student(1009, fedethnicity=0, fer=12, lep=0, races=("I",)),
    Student(1010, fedethnicity=0, fer=12, lep=0),
    Student(1010, fedethnicity=1, fer=12, lep=0),
    Student(1011, enroll=2, fer=16),
    # Oracle cannot tell '' from NULL: empty text wherever text can be.
    Student(1012, first="", last="", fedethnicity=0, fer=16, lep=0, races=("",), current=("", "", "")),
]


def export_bytes(connection, profile: ce.Profile, compare: bool, changed_only: bool = False) -> bytes:
    statement = ce.export_statement(profile, compare)
    summary = ce.Summary(fields=profile.value_fields(), compared=compare)
    mapper = ce.StudentMapper(profile, statement, summary)
    lines = ce.export_lines(ce.stream_batches(ce.Database(connection, 60), statement), mapper, changed_only)
    return "".join(lines).encode("utf-8")


def profiles():
    yield "built-in", ce.Profile()
    for path in sorted(EXAMPLES.glob("*.toml")):
        yield path.name, ce.load_profile(path)
    yield (
        "upper-case select list",
        ce.dataclasses.replace(
            ce.Profile(),
            query="SELECT S.ID, S.DCID, S.STUDENT_NUMBER, S.FIRST_NAME, S.LAST_NAME, S.FEDETHNICITY,\n"
            "       D.FER STATE_RACE, X.LEP\nFROM STUDENTS S\n"
            "LEFT JOIN S_IL_STU_DEMOGRAPHICS_X D ON D.STUDENTSDCID = S.DCID\n"
            "LEFT JOIN S_IL_STU_X X ON X.STUDENTSDCID = S.DCID\nWHERE S.ENROLL_STATUS = 0;  -- ends like a script",
            enroll_statuses=None,  # a query of its own, written before students.enroll_statuses
        ),
    )


@pytest.mark.parametrize(("name", "profile"), list(profiles()), ids=[name for name, _ in profiles()])
@pytest.mark.parametrize("mode", ["nightly", "dry-run", "changed-only"])
def test_every_statement_gives_the_same_bytes_on_postgresql_and_sqlite(pg_db, tmp_path, name, profile, mode):
    compare = mode != "nightly"
    sqlite = sqlite3.connect(make_db(tmp_path / "ps.sqlite", STUDENTS), check_same_thread=False)
    postgres = pg_db(STUDENTS)
    on_sqlite = export_bytes(sqlite, profile, compare, mode == "changed-only")
    on_postgres = export_bytes(postgres, profile, compare, mode == "changed-only")
    assert on_postgres == on_sqlite
    if mode == "nightly" and name == "built-in":
        assert on_sqlite == (
            b"1001\tN\tW\tN\n1002\tY\t\tY\n1003\t\tP\tN\n1004\t\t\tN\n1005\tN\t\t\n"
            b"1006\tN\tA\tY\n1008\tN\tW\t\n1009\tN\tI\tN\n1012\tN\tW\tN\n"
        )


def test_check_probes_run_on_postgresql(pg_db):
    database = ce.Database(pg_db(STUDENTS), 60)
    for _, profile in profiles():
        for compare, mode in ((False, "nightly"), (True, "comparison")):
            assert ce.probe_query(database, ce.export_statement(profile, compare).sql, mode) is None
    # and a probe fails as --check shows it: the strict engine names the column
    broken = ce.export_statement(ce.Profile(), False).sql.replace("q.lep", "q.lepp")
    with pytest.raises(ce.DatabaseError, match=r"the nightly query fails: .*lepp"):
        ce.probe_query(database, broken, "nightly")


def test_oracle_number_shapes_read_the_same(pg_db):
    # PostgreSQL returns NUMERIC as Decimal (as Oracle does on request); the
    # letters and numbers come out the same as from SQLite's ints and floats.
    postgres = pg_db([Student(1013, fedethnicity=1, fer=14, lep=1)])
    assert export_bytes(postgres, ce.Profile(), False) == b"1013\tY\tB\tY\n"


# Pre-registered students (ENROLL_STATUS -1), exported where the profile says so.
ENROLLED = [
    Student(2001, fedethnicity=1, fer=16, lep=0),
    Student(2002, enroll=-1, fedethnicity=0, fer=14, lep=1),  # pre-registered
    Student(2003, enroll=-1, first="TEST", fer=16),  # a pre-registered test account
    Student(2004, enroll=-1, fer=16),
    Student(2004, enroll=-1, fer=13),  # a pre-registered duplicate that disagrees
    Student(2005, enroll=2, fer=16),  # left the district
]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [(("0",), b"2001\tY\tW\tN\n"), (("0", "-1"), b"2001\tY\tW\tN\n2002\tN\tB\tY\n")],
    ids=["active only (default)", "active and pre-registered"],
)
def test_enrollment_statuses_on_postgresql_and_sqlite(pg_db, tmp_path, statuses, expected):
    profile = ce.dataclasses.replace(ce.Profile(), enroll_statuses=statuses)
    sqlite = sqlite3.connect(make_db(tmp_path / "ps.sqlite", ENROLLED), check_same_thread=False)
    assert export_bytes(sqlite, profile, False) == expected
    assert export_bytes(pg_db(ENROLLED), profile, False) == expected
