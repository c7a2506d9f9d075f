"""Close the loop: notice when PowerSchool did not import the previous upload.

SQLite databases play both sides: the export reads them, and the test plays
the AutoComm import by writing (or not writing) the custom fields.
"""

import json
import sqlite3
import time

import pytest
from conftest import Student, make_db, one_line, remote_names

HOURS = 3600


def students(count=100, first=500_000):
    return [
        Student(first + i, fedethnicity=i % 2, fer=16 if i % 3 else 14, lep=i % 5 == 0) for i in range(count)
    ]


@pytest.fixture
def loop_app(uploading_app, sftp_server, tmp_path):
    """An uploading app over a database whose custom fields the test controls."""
    app = uploading_app
    app.db_path = make_db(tmp_path / "loop.sqlite", students())
    app.base_args = ("--sqlite", str(app.db_path), "--timeout", "5", "--retry-wait", "0.05")
    return app


def import_file(db_path, sent: bytes, only=None):
    """Play PowerSchool's import: copy the sent values into the custom fields."""
    with sqlite3.connect(db_path) as connection:
        for line in sent.decode().splitlines():
            number, hispanic, race, ell = line.split("\t")
            if only is not None and int(number) not in only:
                continue
            (dcid,) = connection.execute(
                "SELECT dcid FROM students WHERE student_number = ?", (number,)
            ).fetchone()
            connection.execute("DELETE FROM u_def_ext_students0 WHERE studentsdcid = ?", (dcid,))
            connection.execute(
                "INSERT INTO u_def_ext_students0 VALUES (?, ?, ?, ?)", (dcid, hispanic, race, ell)
            )


def age_last_upload(app, hours):
    path = app.root / "clever_export.state.json"
    state = json.loads(path.read_text())
    then = time.localtime(time.time() - hours * HOURS)
    state["last_upload"]["at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", then)
    path.write_text(json.dumps(state))


def first_night(app, sftp_server):
    result = app.run(*app.base_args)
    assert result.returncode == 0, result.stderr
    return sftp_server.remote().read_bytes()


def test_an_applied_import_passes(loop_app, sftp_server):
    sent = first_night(loop_app, sftp_server)
    import_file(loop_app.db_path, sent)
    age_last_upload(loop_app, 30)
    result = loop_app.run(*loop_app.base_args)
    assert result.returncode == 0, result.stderr
    assert "import check: 0 of 100 students of the previous upload still differ" in result.log


def test_an_import_that_never_ran_exits_6_after_uploading(loop_app, sftp_server, ping_server):
    first_night(loop_app, sftp_server)  # the custom fields stay empty: AutoComm never ran
    age_last_upload(loop_app, 30)
    with sqlite3.connect(loop_app.db_path) as connection:  # tonight's data changed a little
        connection.execute("UPDATE s_il_stu_demographics_x SET fer = 13 WHERE studentsdcid = 10001")
    alerts = {"CLEVER_NOTIFY": ping_server.url.replace("http://", "json://") + "/alert"}
    result = loop_app.run(*loop_app.base_args, "--ping-url", ping_server.url, env=alerts)
    assert result.returncode == 6
    (alert,) = [body for path, body in ping_server.pings if path.endswith("/alert")]
    assert "exit 6 (PowerSchool did not import" in alert and "500000" not in alert
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "PowerSchool has not imported the upload of" in line
    assert "100 of 100 students still differ" in line and "check the AutoComm import" in line
    assert "500000" not in result.stderr  # the student example goes to the log only
    assert "import check example: student 500000: Hispanic_Latino sent N, PowerSchool has blank" in result.log
    assert sftp_server.remote().read_bytes().startswith(b"500000\tN\tA\t")  # tonight's file was uploaded
    assert "/ping/abc/fail" in [path for path, _ in ping_server.pings]
    assert all("500000" not in body for _, body in ping_server.pings)
    status = loop_app.run("--status")
    assert status.returncode == 6 and "100 of 100 students differed" in status.stdout


@pytest.mark.parametrize(
    ("imported", "tolerance", "code"), [(90, "1", 6), (98, "1", 6), (99, "1", 0), (90, "15", 0)]
)
def test_a_partial_import_is_judged_by_the_tolerance(loop_app, sftp_server, imported, tolerance, code):
    sent = first_night(loop_app, sftp_server)
    import_file(loop_app.db_path, sent, only={500_000 + i for i in range(imported)})
    age_last_upload(loop_app, 30)
    result = loop_app.run(*loop_app.base_args, "--import-tolerance", tolerance)
    assert result.returncode == code, result.stderr
    assert f"{100 - imported} of 100 students of the previous upload still differ" in result.log


def test_a_young_previous_upload_is_not_checked(loop_app, sftp_server):
    first_night(loop_app, sftp_server)
    age_last_upload(loop_app, 2)
    result = loop_app.run(*loop_app.base_args)
    assert result.returncode == 0 and "younger than --import-deadline 20 hours" in result.log


def test_deadline_zero_turns_the_check_off(loop_app, sftp_server):
    first_night(loop_app, sftp_server)
    age_last_upload(loop_app, 30)
    result = loop_app.run(*loop_app.base_args, "--import-deadline", "0")
    assert result.returncode == 0 and "import check" not in result.log


def test_no_previous_upload_no_check(loop_app, sftp_server):
    result = loop_app.run(*loop_app.base_args)
    assert result.returncode == 0 and "import check skipped: no previous upload" in result.log


def test_a_missing_current_values_table_skips_the_check_with_one_info_line(loop_app, sftp_server):
    first_night(loop_app, sftp_server)
    age_last_upload(loop_app, 30)
    with sqlite3.connect(loop_app.db_path) as connection:
        connection.execute("DROP TABLE u_def_ext_students0")
    result = loop_app.run(*loop_app.base_args)
    assert result.returncode == 0, result.stderr
    assert result.log.count("import check skipped: current_values.table u_def_ext_students0") == 1
    assert "WARNING" not in result.log and result.stderr == ""


def test_changed_only_uploads_are_checked_for_the_students_they_held(loop_app, sftp_server):
    sent = first_night(loop_app, sftp_server)
    import_file(loop_app.db_path, sent)
    with sqlite3.connect(loop_app.db_path) as connection:  # three students change race
        connection.execute(
            "UPDATE s_il_stu_demographics_x SET fer = 12 WHERE studentsdcid IN (10001, 10002, 10003)"
        )
    age_last_upload(loop_app, 30)
    changed = loop_app.run(*loop_app.base_args, "--changed-only")
    assert changed.returncode == 0 and len(sftp_server.remote().read_bytes().splitlines()) == 3
    age_last_upload(loop_app, 30)  # and the import of those three never happened
    result = loop_app.run(*loop_app.base_args, "--changed-only")
    assert result.returncode == 6
    assert "3 of 3 students still differ" in result.stderr
    assert remote_names(sftp_server) == ["raceethnicity.txt"]


def test_dry_run_shows_the_last_check(loop_app, sftp_server):
    first_night(loop_app, sftp_server)
    age_last_upload(loop_app, 30)
    assert loop_app.run(*loop_app.base_args).returncode == 6
    result = loop_app.run(*loop_app.base_args, "--dry-run")
    assert result.returncode == 0
    assert "last import check:" in result.stdout and "100 of 100 students differed" in result.stdout
    assert "Hispanic_Latino differs" in result.stdout and "500000" not in result.stdout


# --- Blanks: whether an AutoComm import of a blank clears a field is not settled ----


@pytest.fixture
def blank_app(loop_app, tmp_path):
    """Ten of the hundred students are unanswered (FEDETHNICITY -1): sent blank."""
    with sqlite3.connect(loop_app.db_path) as connection:
        connection.execute("UPDATE students SET fedethnicity = -1 WHERE student_number < 500010")
    return loop_app


def import_keeping_old_values_for_blanks(db_path, sent: bytes, old="N", only=None):
    """An import that leaves a field unchanged when it is sent blank (the old script's N stays)."""
    import_file(db_path, sent, only=only)
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            f"UPDATE u_def_ext_students0 SET custom_ethnicity = '{old}' WHERE custom_ethnicity = ''"
        )


def test_blanks_applied_pass_quietly(blank_app, sftp_server):
    sent = first_night(blank_app, sftp_server)
    import_file(blank_app.db_path, sent)
    age_last_upload(blank_app, 30)
    result = blank_app.run(*blank_app.base_args)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "blank not applied" not in result.log


def test_blanks_not_applied_warn_once_and_never_exit_6(blank_app, sftp_server, ping_server):
    sent = first_night(blank_app, sftp_server)
    import_keeping_old_values_for_blanks(blank_app.db_path, sent)
    age_last_upload(blank_app, 30)
    result = blank_app.run(*blank_app.base_args, "--ping-url", ping_server.url)
    assert result.returncode == 0, result.stderr
    line = one_line(result.stderr)
    assert "blank not applied: Hispanic_Latino 10 student fields sent blank still hold a value" in line
    assert "5000" not in result.stderr  # the example student goes to the log only
    assert (
        "blank not applied, example: student 500000: Hispanic_Latino sent blank, PowerSchool has N"
        in result.log
    )
    assert "import check: 0 of 100 students of the previous upload still differ" in result.log
    assert all("50000" not in body for _, body in ping_server.pings)
    status = blank_app.run("--status")
    assert "0 of 100 students differed; Hispanic_Latino sent blank but still set: 10" in status.stdout


def test_blanks_not_applied_beside_a_real_non_import_still_exit_6(blank_app, sftp_server):
    sent = first_night(blank_app, sftp_server)
    imported = {500_000 + i for i in range(80)}  # 20 students never imported
    import_keeping_old_values_for_blanks(blank_app.db_path, sent, only=imported)
    age_last_upload(blank_app, 30)
    result = blank_app.run(*blank_app.base_args)
    assert result.returncode == 6
    assert "20 of 100 students still differ" in result.stderr
    assert "blank not applied: Hispanic_Latino 10" in result.stderr


def test_dry_run_counts_blanks_that_powerschool_still_holds(blank_app, sftp_server):
    sent = first_night(blank_app, sftp_server)
    import_keeping_old_values_for_blanks(blank_app.db_path, sent)
    result = blank_app.run(*blank_app.base_args, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert (
        "  blank here but set in PowerSchool (an import may not clear them): Hispanic_Latino 10, Race 0, ELL 0"
        in result.stdout.splitlines()
    ), result.stdout


# --- The kept copy is read with the columns it was written with -----------------------


def import_by_columns(db_path, sent: bytes, columns):
    """Play the import of a file whose columns are in `columns` order."""
    rows = [dict(zip(columns, line.split("\t"), strict=True)) for line in sent.decode().splitlines()]
    lines = "".join(
        "\t".join(row.get(field, "") for field in ("student_number", "Hispanic_Latino", "Race", "ELL")) + "\n"
        for row in rows
    )
    import_file(db_path, lines.encode())


@pytest.mark.parametrize(
    "tonight",
    [
        ["Race", "student_number", "ELL", "Hispanic_Latino"],
        ["student_number", "ELL", "Race", "Hispanic_Latino"],
    ],
    ids=["student_number moved", "fields reordered"],
)
def test_a_profile_change_between_nights_neither_raises_nor_hides_an_alarm(
    loop_app, sftp_server, tmp_path, tonight
):
    config = tmp_path / "tonight.toml"
    config.write_text(f"[output]\ncolumns = {tonight!r}\n".replace("'", '"'))
    sent = first_night(loop_app, sftp_server)  # the built-in columns
    import_file(loop_app.db_path, sent)  # and PowerSchool imported it
    age_last_upload(loop_app, 30)
    applied = loop_app.run(*loop_app.base_args, "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    assert "import check: 0 of 100 students of the previous upload still differ" in applied.log
    age_last_upload(loop_app, 30)  # tonight's file, in the new order, is never imported
    missed = loop_app.run(*loop_app.base_args, "--config", str(config))
    assert missed.returncode == 0  # it matched what PowerSchool already had: nothing to see
    with sqlite3.connect(loop_app.db_path) as connection:
        connection.execute("DELETE FROM u_def_ext_students0")  # the import of that upload never happened
    age_last_upload(loop_app, 30)
    result = loop_app.run(*loop_app.base_args, "--config", str(config))
    assert result.returncode == 6 and "100 of 100 students still differ" in result.stderr
