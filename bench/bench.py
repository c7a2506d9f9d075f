#!/usr/bin/env python3
"""Benchmark: clever_export against the floor and against one query per student.

    python bench/bench.py                   # 10k, 20k, 100k and 1M students
    python bench/bench.py --sizes 10000 --latency-ms 0

Builds PowerSchool-shaped SQLite databases (cached in bench/data/; ~7% of
students inactive, ~3% without a demographics row, ~10% without an S_IL_STU_X
row, STUDENTRACE rows for all) and times, each in a fresh process:

  export    clever_export.main(["--sqlite", db, "--no-upload", ...]), end to end
  floor     one joined SELECT and a minimal loop writing the same columns
  original  the replaced script's shape: one query for the students, then one
            LEP query per student
  client    the export again, its profile reading a pre-joined table
  clientfloor  a minimal loop over exactly the rows the client export's
            statement returns: client / clientfloor is the script's own
            per-row cost, with the database's work the same on both sides

Every execute() first sleeps --latency-ms (default 1 ms), a simulated database
round trip.  Peak memory is the process's maximum resident set size.  The
contenders must write byte-identical files; the run says so, then checks
the targets and exits 1 if one is missed.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO))

import clever_export  # noqa: E402

DATA_DIR = BENCH_DIR / "data"
FER_MIX = [16] * 50 + [11] * 20 + [14] * 12 + [13] * 8 + [17] * 5 + [12, 15, None, 99, 16]
RACECD = {16: ["W"], 14: ["B"], 13: ["A"], 12: ["I"], 15: ["P"], 17: ["W", "B"], 11: ["W"]}


# --- Databases ---------------------------------------------------------------


def build_database(path: Path, students: int, seed: int = 118) -> None:
    """A PowerSchool-shaped database with PowerSchool's indexes."""
    rng = random.Random(seed)
    temp = path.with_suffix(".building")
    temp.unlink(missing_ok=True)
    connection = sqlite3.connect(temp)
    connection.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
    seed_sql = clever_export.DEMO_SEED_FILE.read_text(encoding="utf-8")
    connection.executescript(seed_sql[: seed_sql.index("INSERT INTO")])
    numbers = rng.sample(range(100_000, 100_000 + students * 3), students)  # not in dcid order
    students_rows, demographics, lep, races = [], [], [], []
    for i, number in enumerate(numbers):
        dcid, student_id = 1_000_000 + i, 2_000_000 + i
        fer = rng.choice(FER_MIX)
        enroll = 0 if rng.random() >= 0.07 else rng.choice([2, 3, -1])
        fedethnicity = 1 if fer == 11 else rng.choice([0, 0, 0, 0, 0, 0, 0, 0, -1, None])
        students_rows.append((student_id, dcid, number, f"First{i}", f"Last{i}", enroll, fedethnicity))
        if rng.random() >= 0.03:
            demographics.append((dcid, fer))
        if rng.random() >= 0.10:
            lep.append((dcid, 1 if rng.random() < 0.12 else 0))
        races.extend((student_id, code) for code in RACECD.get(fer, []))
    connection.executemany("INSERT INTO students VALUES (?, ?, ?, ?, ?, ?, ?)", students_rows)
    connection.executemany("INSERT INTO s_il_stu_demographics_x VALUES (?, ?)", demographics)
    connection.executemany("INSERT INTO s_il_stu_x VALUES (?, ?)", lep)
    connection.executemany("INSERT INTO studentrace VALUES (?, ?)", races)
    connection.executescript(
        """
        CREATE INDEX students_number ON students (student_number);
        CREATE INDEX demographics_dcid ON s_il_stu_demographics_x (studentsdcid);
        CREATE INDEX il_stu_dcid ON s_il_stu_x (studentsdcid);
        CREATE INDEX studentrace_id ON studentrace (studentid);
        -- The rows the export statement reads, joined once, for the client-side measurement.
        -- Clustered in student_number order, so reading it in that order costs the
        -- database little and the measurement shows the script's own work.
        CREATE TABLE prejoined (id, dcid, student_number, first_name, last_name, fedethnicity,
                                state_race, lep, PRIMARY KEY (student_number, dcid)) WITHOUT ROWID;
        INSERT INTO prejoined
          SELECT s.id, s.dcid, s.student_number, s.first_name, s.last_name, s.fedethnicity,
                 d.fer state_race, x.lep
          FROM students s
          LEFT JOIN s_il_stu_demographics_x d ON d.studentsdcid = s.dcid
          LEFT JOIN s_il_stu_x x ON x.studentsdcid = s.dcid
          WHERE s.enroll_status = 0;
        """
    )
    connection.commit()
    connection.close()
    temp.replace(path)


def database_for(students: int, data_dir: Path = DATA_DIR) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"powerschool_{students}.sqlite"
    if not path.exists():
        started = time.monotonic()
        build_database(path, students)
        print(f"  built {path.name} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return path


# --- A database with a round trip per query -----------------------------------


class SlowConnection:
    """sqlite3 with a simulated network round trip on every execute()."""

    def __init__(self, connection: sqlite3.Connection, latency: float):
        self._connection, self.latency, self.queries = connection, latency, 0

    def cursor(self) -> SlowCursor:
        return SlowCursor(self, self._connection.cursor())

    def close(self) -> None:
        self._connection.close()


class SlowCursor:
    def __init__(self, owner: SlowConnection, cursor: sqlite3.Cursor):
        self._owner, self._cursor = owner, cursor

    def execute(self, sql: str, parameters=()):
        self._owner.queries += 1
        if self._owner.latency:
            time.sleep(self._owner.latency)
        self._cursor.execute(sql, parameters)
        return self

    def __getattr__(self, name):
        return getattr(self._cursor, name)

    def __setattr__(self, name, value):
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._cursor, name, value)


# --- The three contenders -------------------------------------------------------

RACE = {"12": "I", "13": "A", "14": "B", "15": "P", "16": "W", "17": "M"}


def run_export(connection: SlowConnection, output: Path, workdir: Path, extra: tuple[str, ...] = ()) -> None:
    # The simulated network round trip is the one seam: the export opens this connection.
    clever_export.connect_sqlite = lambda path: connection
    code = clever_export.main(
        ["--sqlite", "unused", "--no-upload", "--output", str(output), "--log-file",
         str(workdir / "bench.log"), "--state-file", str(workdir / "state.json"), "--quiet", *extra],
        environ={},
    )  # fmt: skip
    if code != 0:
        raise SystemExit(f"export failed with exit code {code}")


# --- The script's own cost: both read the same pre-joined rows -------------------

PREJOINED_PROFILE = """\
[students]
# Every row of the pre-joined table is an active student.
query = "SELECT id, dcid, student_number, first_name, last_name, fedethnicity, state_race, lep FROM prejoined WHERE 1 = 1"
tables = ["prejoined"]
"""


def prejoined_statement() -> str:
    profile = clever_export.profile_from_mapping(tomllib.loads(PREJOINED_PROFILE))
    return clever_export.export_statement(profile, False).sql


def run_client_export(connection: SlowConnection, output: Path, workdir: Path) -> None:
    """The whole export, reading the pre-joined table: what it adds to the rows is its own cost."""
    config = workdir / "prejoined.toml"
    config.write_text(PREJOINED_PROFILE)
    run_export(connection, output, workdir, ("--config", str(config)))


def run_client_floor(connection: SlowConnection, output: Path, workdir: Path) -> None:
    """A minimal loop over exactly the rows the export's statement returns."""
    cursor = connection.cursor()
    cursor.execute(prejoined_statement())
    hispanic = {1: "Y", 0: "N"}
    with open(output, "w", encoding="utf-8", newline="\n") as out:
        while rows := cursor.fetchmany(5000):
            for _dcid, number, test_name, fedethnicity, fer, lep in rows:  # the statement's order
                if test_name:
                    continue
                race = RACE.get(str(fer), "") if fer is not None else ""
                out.write(f"{number}\t{hispanic.get(fedethnicity, '')}\t{race}\t{'Y' if lep == 1 else 'N'}\n")


FLOOR_SQL = """
SELECT s.student_number, s.fedethnicity, d.fer, x.lep
FROM students s
LEFT JOIN s_il_stu_demographics_x d ON d.studentsdcid = s.dcid
LEFT JOIN s_il_stu_x x ON x.studentsdcid = s.dcid
WHERE s.enroll_status = 0
ORDER BY s.student_number"""


def run_floor(connection: SlowConnection, output: Path, workdir: Path) -> None:
    """The least work that produces the file: one SELECT, one loop, no checks."""
    cursor = connection.cursor()
    cursor.execute(FLOOR_SQL)
    hispanic = {1: "Y", 0: "N"}
    with open(output, "w", encoding="utf-8", newline="\n") as out:
        while rows := cursor.fetchmany(5000):
            for number, fedethnicity, fer, lep in rows:
                race = RACE.get(str(fer), "") if fer is not None else ""
                out.write(f"{number}\t{hispanic.get(fedethnicity, '')}\t{race}\t{'Y' if lep == 1 else 'N'}\n")


def run_original(connection: SlowConnection, output: Path, workdir: Path) -> None:
    """The replaced script's shape: the students, then a LEP query per student."""
    cursor = connection.cursor()
    cursor.execute(
        "SELECT s.dcid, s.student_number, s.fedethnicity, d.fer FROM students s "
        "LEFT JOIN s_il_stu_demographics_x d ON d.studentsdcid = s.dcid "
        "WHERE s.enroll_status = 0 ORDER BY s.student_number"
    )
    hispanic = {1: "Y", 0: "N"}
    with open(output, "w", encoding="utf-8", newline="\n") as out:
        for dcid, number, fedethnicity, fer in cursor.fetchall():
            lep_cursor = connection.cursor()
            lep_cursor.execute("SELECT lep FROM s_il_stu_x WHERE studentsdcid = ?", (dcid,))
            lep_row = lep_cursor.fetchone()
            race = RACE.get(str(fer), "") if fer is not None else ""
            ell = "Y" if lep_row and lep_row[0] == 1 else "N"
            out.write(f"{number}\t{hispanic.get(fedethnicity, '')}\t{race}\t{ell}\n")


CONTENDERS = {
    "export": run_export,
    "floor": run_floor,
    "original": run_original,
    "client": run_client_export,
    "clientfloor": run_client_floor,
}


def child(contender: str, database: Path, latency: float, output: Path) -> None:
    """Runs one contender in this (fresh) process; prints seconds and queries."""
    connection = SlowConnection(
        sqlite3.connect(database, check_same_thread=False), latency
    )  # bounded() reads on a worker
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        CONTENDERS[contender](connection, output, Path(workdir))
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "queries": connection.queries, "peak_mb": peak_memory_mb()}))


def peak_memory_mb() -> float:
    """This process's peak resident set since exec (VmHWM; Linux)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        import resource  # elsewhere: ru_maxrss, which may include the parent's pre-exec image

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / 1024
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kilobytes) / 1024


def measure(contender: str, database: Path, latency: float, output: Path, repeat: int) -> dict:
    """The best of `repeat` runs, each in a fresh process (the least disturbed one)."""
    command = [sys.executable, __file__, "--child", contender, "--db", str(database),
               "--latency-ms", str(latency * 1000), "--output", str(output)]  # fmt: skip
    runs = []
    for _ in range(repeat):
        process = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if process.returncode != 0:
            raise SystemExit(f"{contender} failed on {database.name}")
        runs.append(json.loads(process.stdout))
    return min(runs, key=lambda run: run["seconds"])


# --- The report -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 100_000, 1_000_000])
    parser.add_argument("--latency-ms", type=float, default=1.0, help="simulated round trip per query")
    parser.add_argument("--original-max", type=int, default=20_000,
                        help="largest size to run the one-query-per-student shape at (it is slow)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of export and floor per size; the fastest counts (default 3)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where the databases are cached")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    latency = args.latency_ms / 1000
    if args.child:
        child(args.child, args.db, latency, args.output)
        return 0

    databases = {size: database_for(size, args.data_dir) for size in args.sizes}
    print(f"latency {args.latency_ms:g} ms per query; best of {args.repeat}; Python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs; {sys.platform}")  # fmt: skip
    print(f"{'students':>9} {'contender':<11} {'seconds':>8} {'x floor':>8} {'peak MB':>8} {'queries':>8}")
    results: dict[tuple[int, str], dict] = {}
    with tempfile.TemporaryDirectory() as outdir:
        for size in args.sizes:
            database = databases[size]
            files = {}
            for contender in CONTENDERS:
                if contender == "original" and size > args.original_max:
                    continue
                files[contender] = Path(outdir) / f"{contender}_{size}.txt"
                repeat = 1 if contender == "original" else args.repeat  # seconds, not milliseconds, of noise
                results[size, contender] = measure(contender, database, latency, files[contender], repeat)
            for contender in files:
                r = results[size, contender]
                floor = results[size, "clientfloor" if contender.startswith("client") else "floor"]["seconds"]
                print(f"{size:>9} {contender:<11} {r['seconds']:>8.3f} {r['seconds'] / floor:>8.2f} "
                      f"{r['peak_mb']:>8.1f} {r['queries']:>8}")  # fmt: skip
            contents = {files[c].read_bytes() for c in files}
            print(f"{'':>9} files identical: {'yes' if len(contents) == 1 else 'NO'}")
            if len(contents) != 1:
                return 1
    return report_targets(results, args.sizes)


def report_targets(results: dict, sizes: list[int]) -> int:
    checks = []
    if 1_000_000 in sizes:
        export, floor = results[1_000_000, "export"], results[1_000_000, "floor"]
        ratio = export["seconds"] / floor["seconds"]
        checks.append((f"1M students: export {ratio:.2f}x the floor (target <= 1.5x)", ratio <= 1.5))
        checks.append(
            (f"1M students: peak {export['peak_mb']:.1f} MB (target <= 64 MB)", export["peak_mb"] <= 64)
        )
        client, client_floor = results[1_000_000, "client"], results[1_000_000, "clientfloor"]
        own = client["seconds"] / client_floor["seconds"]
        checks.append((f"1M students, same pre-joined rows: the script's own cost {own:.2f}x a minimal loop "
                       "(target <= 1.5x)", own <= 1.5))  # fmt: skip
    if (20_000, "original") in results:
        speedup = results[20_000, "original"]["seconds"] / results[20_000, "export"]["seconds"]
        checks.append((f"20k students: {speedup:.0f}x faster than one query per student (target >= 100x)",
                       speedup >= 100))  # fmt: skip
    queries = {results[size, "export"]["queries"] for size in sizes if (size, "export") in results}
    checks.append(
        (f"export queries per run at every size: {sorted(queries)} (target: one value)", len(queries) == 1)
    )
    for text, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {text}")
    return 0 if all(passed for _, passed in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
