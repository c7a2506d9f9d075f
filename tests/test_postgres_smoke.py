"""The PostgreSQL fixture itself: a throwaway server, PowerSchool-shaped rows,
and a portable query read the way the export reads (cursor, fetchmany)."""

from decimal import Decimal

import pytest
from conftest import NO_ROW, Student

# tests/pg.py's fixtures, pg_cluster and pg_db.  Other names from pg are
# imported inside the tests: imported up here, pg would be loaded before pytest
# loads it as a plugin, and pytest would warn it cannot rewrite its asserts.
pytest_plugins = ["pg"]

SUMMARY = """
SELECT s.student_number,
       TRIM(s.first_name) AS first_name,
       COUNT(DISTINCT r.racecd) AS race_count,
       MAX(d.fer) AS fer,
       CASE WHEN MAX(x.lep) = 1 THEN 'Y' ELSE 'N' END AS el,
       MAX(c.custom_race) AS current_race
FROM students s
LEFT JOIN s_il_stu_demographics_x d ON d.studentsdcid = s.dcid
LEFT JOIN s_il_stu_x x ON x.studentsdcid = s.dcid
LEFT JOIN studentrace r ON r.studentid = s.id
LEFT JOIN u_def_ext_students0 c ON c.studentsdcid = s.dcid
WHERE s.enroll_status = 0
GROUP BY s.student_number, s.first_name
ORDER BY s.student_number
"""


def read_all(connection, sql, batch=2):
    """As the export reads: one execute, names from description, fetchmany batches."""
    cursor = connection.cursor()
    cursor.arraysize = batch
    try:
        cursor.execute(sql)
        columns = [description[0].lower() for description in cursor.description]
        rows, batches = [], 0
        while chunk := cursor.fetchmany(batch):
            rows.extend(chunk)
            batches += 1
    finally:
        cursor.close()
    return columns, rows, batches


def test_portable_query_on_postgresql(pg_db):
    connection = pg_db(
        [
            Student(1001, first=" Ava ", fer=16, lep=0, races=("W",)),
            Student(1002, first="Ben", fer=[11, 13], lep=[0, 1], races=("B", "W", "B")),
            Student(1003, first="Cy", fer=NO_ROW, lep=NO_ROW, current=("N", "W", "N")),
            Student(1004, first="Dee", enroll=2),  # not enrolled: filtered out
            Student(1005, first="Eve", fer=None, lep=True),
        ]
    )
    columns, rows, batches = read_all(connection, SUMMARY)
    assert columns == ["student_number", "first_name", "race_count", "fer", "el", "current_race"]
    assert rows == [
        (Decimal(1001), "Ava", 1, Decimal(16), "N", None),
        (Decimal(1002), "Ben", 2, Decimal(13), "Y", None),
        (Decimal(1003), "Cy", 0, None, "N", "W"),
        (Decimal(1005), "Eve", 0, None, "Y", None),
    ]
    assert batches == 2


def test_rows_and_ids_mirror_the_sqlite_fixture(pg_db):
    connection = pg_db([Student(1001, fer=[16, 14], lep=NO_ROW), Student(1002, races=("A",))])
    _, students, _ = read_all(connection, "SELECT id, dcid, student_number FROM students ORDER BY id")
    assert students == [(20_001, 10_001, Decimal(1001)), (20_002, 10_002, Decimal(1002))]
    _, fers, _ = read_all(connection, "SELECT studentsdcid, fer FROM s_il_stu_demographics_x ORDER BY fer")
    assert fers == [(10_001, Decimal(14)), (10_001, Decimal(16)), (10_002, Decimal(16))]
    _, leps, _ = read_all(connection, "SELECT studentsdcid FROM s_il_stu_x")
    assert leps == [(10_002,)]
    _, races, _ = read_all(connection, "SELECT studentid, racecd FROM studentrace")
    assert races == [(20_002, "A")]


def test_postgresql_is_strict_where_sqlite_is_not(pg_db):
    import psycopg

    connection = pg_db([Student(1001)])
    with pytest.raises(psycopg.errors.GroupingError):
        read_all(connection, "SELECT s.first_name, COUNT(*) FROM students s")
    with pytest.raises(psycopg.errors.UndefinedFunction):  # numeric = text: no implicit cast
        read_all(connection, "SELECT 1 FROM students WHERE student_number = '1001'::varchar")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):  # the export's account only reads
        read_all(connection, "DELETE FROM students")


def test_a_value_its_column_cannot_hold_is_refused(pg_cluster):
    from pg import NotRepresentable, make_pg_db

    with pytest.raises(NotRepresentable, match=r"student #2: .*'EL'.*s_il_stu_x"):
        make_pg_db(pg_cluster, [Student(1001), Student(1002, lep="EL")])
    # Text PostgreSQL can read as a number is stored as that number.
    name = make_pg_db(pg_cluster, [Student(" 1001 ", fer=" 16 ")])
    with pg_cluster.connect(name) as connection:
        _, rows, _ = read_all(
            connection,
            "SELECT student_number, fer FROM students JOIN s_il_stu_demographics_x ON studentsdcid = dcid",
        )
    assert rows == [(Decimal(1001), Decimal(16))]
    pg_cluster.drop_database(name)


def test_one_cluster_serves_the_session(pg_cluster):
    assert pg_cluster.startup_seconds is not None
    with pg_cluster.connect() as connection:
        version = connection.execute("SHOW server_version_num").fetchone()[0]
        listen = connection.execute("SHOW listen_addresses").fetchone()[0]
    assert int(version) >= 100_000
    assert listen == ""  # the Unix socket only
