"""The Oracle path without an Oracle server: tnsnames aliases, thick-mode set-up,
driver messages kept whole, and --check running the real statements."""

import pytest
from conftest import ORACLE_ENV, SECRET_DB_PASSWORD, Student, one_line

# python-oracledb keeps thick mode's set-up, and its first failure, for the process's life.
pytestmark = pytest.mark.own_process


def tnsnames(tmp_path, port, bom: bool = False):
    folder = tmp_path / "tns"
    folder.mkdir()
    (folder / "tnsnames.ora").write_bytes(
        (b"\xef\xbb\xbf" if bom else b"")  # Windows PowerShell 5.1's -Encoding UTF8, Notepad
        + (
            f"PSPRODDB =\r\n  (DESCRIPTION=(ADDRESS=(PROTOCOL=TCP)(HOST=127.0.0.1)(PORT={port}))\r\n"
            "  (CONNECT_DATA=(SERVICE_NAME=PSPROD)))\r\n"
        ).encode()
    )
    return folder


def closed_port():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@pytest.mark.parametrize("bom", [False, True], ids=["plain", "BOM and CRLF"])
def test_alias_resolves_from_tns_admin_and_the_message_shows_host_and_port(app, tmp_path, bom):
    port = closed_port()
    folder = tnsnames(tmp_path, port, bom)
    before = (folder / "tnsnames.ora").read_bytes()
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "PSPRODDB", "TNS_ADMIN": str(folder)}
    result = app.run("--no-upload", "--timeout", "3", env=env)
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert f"PSPRODDB (127.0.0.1:{port}/PSPROD" in line and "Connection refused" in line
    assert "DPY-6005" in line and SECRET_DB_PASSWORD not in result.everything()
    assert (folder / "tnsnames.ora").read_bytes() == before  # the admin's file is never changed


def test_unknown_alias_names_the_alias_and_the_folder(app, tmp_path):
    folder = tnsnames(tmp_path, 1)
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "NOSUCHDB", "TNS_ADMIN": str(folder)}
    result = app.run("--no-upload", "--timeout", "3", env=env)
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "NOSUCHDB" in line and str(folder) in line and "tnsnames.ora" in line


@pytest.mark.parametrize("via", ["variable", "flag"])
def test_instant_client_that_cannot_load_exits_2_naming_the_variable(app, tmp_path, via):
    empty = tmp_path / "instantclient_23_9"
    empty.mkdir()
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "127.0.0.1:1/PS"}
    args = ["--no-upload", "--timeout", "3"]
    if via == "variable":
        env["ORACLE_CLIENT_LIB_DIR"] = str(empty)
    else:
        args += ["--oracle-client", str(empty)]
    result = app.run(*args, env=env)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "ORACLE_CLIENT_LIB_DIR" in line and "DPI-1047" in line and "docs/oracle.md" in line


def test_instant_client_folder_that_does_not_exist_exits_2(app, tmp_path):
    env = {
        **ORACLE_ENV,
        "POWERSCHOOL_PROD_DB": "127.0.0.1:1/PS",
        "ORACLE_CLIENT_LIB_DIR": str(tmp_path / "no"),
    }
    result = app.run("--no-upload", env=env)
    assert result.returncode == 2 and "ORACLE_CLIENT_LIB_DIR" in one_line(result.stderr)


@pytest.mark.parametrize(
    "driver_text",
    [
        "DPY-3001: Native Network Encryption and Data Integrity is only supported in python-oracledb thick mode",
        "DPY-3010: connections to this database server version are not supported by python-oracledb in thin mode",
        "DPY-3015: password verifier type 0x939 is not supported by python-oracledb in thin mode",
    ],
)
def test_thin_mode_errors_that_need_thick_mode_say_how_to_turn_it_on(driver_text):
    # These need a real Oracle server to happen; the driver's own wording (from
    # python-oracledb's error table) goes through the same function a failure does.
    from conftest import clever_export as ce

    failure = ce.connect_failure("psdb:1521/PS", RuntimeError(driver_text))
    text = str(failure)
    assert failure.exit_code == 3 and driver_text[:8] in text
    assert "needs thick mode" in text and "ORACLE_CLIENT_LIB_DIR" in text and "docs/oracle.md" in text


def test_other_connect_errors_name_the_variables():
    from conftest import clever_export as ce

    cause = ConnectionRefusedError(111, "Connection refused")
    error = RuntimeError("DPY-6005: cannot connect to database (CONNECTION_ID=abc).")
    error.__cause__ = cause
    text = str(ce.connect_failure("h:1/S", error))
    assert "DPY-6005" in text and "Connection refused" in text and "POWERSCHOOL_PROD_DB" in text


def test_check_runs_the_nightly_and_comparison_statements(app, db):
    path = db([Student(1, current=("N", "W", "N"))])
    result = app.run("--check", "--sqlite", str(path), "--timeout", "3")
    assert "[ ok ] nightly query runs" in result.stdout
    assert "[ ok ] comparison query runs" in result.stdout


def test_check_names_the_mode_and_the_database_message_when_a_query_fails(app, db, tmp_path):
    path = db([Student(1)])
    config = tmp_path / "typo.toml"
    config.write_text(
        '[students]\nquery = """SELECT s.id, s.dcid, s.student_number, s.first_name, s.last_name,\n'
        "s.fedethnicity, d.fer state_race, x.lepp lep FROM students s\n"
        "LEFT JOIN s_il_stu_demographics_x d ON d.studentsdcid = s.dcid\n"
        'LEFT JOIN s_il_stu_x x ON x.studentsdcid = s.dcid WHERE s.enroll_status = 0"""\n'
    )
    result = app.run("--check", "--sqlite", str(path), "--config", str(config), "--timeout", "3")
    assert result.returncode == 3  # the first failure: the database checks come before the SFTP ones
    assert "[FAIL] nightly query runs: the nightly query fails: no such column: x.lepp" in result.stdout


def test_check_warns_when_the_current_values_table_is_missing(app, tmp_path):
    import sqlite3

    from conftest import make_db

    path = make_db(tmp_path / "no_current.sqlite", [Student(1)])
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TABLE u_def_ext_students0")
    result = app.run("--check", "--sqlite", str(path), "--timeout", "3")
    assert "[WARN] current_values table u_def_ext_students0 readable" in result.stdout
    changed = app.run("--check", "--changed-only", "--sqlite", str(path), "--timeout", "3")
    assert "[FAIL] current_values table u_def_ext_students0 readable" in changed.stdout
    assert changed.returncode != 0


def test_a_password_in_the_connect_string_is_refused_and_never_shown(app):
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "psnavigator/Hunter2Secret@127.0.0.1:1/PSPRODDB"}
    result = app.run("--no-upload", "--timeout", "3", env=env)
    assert result.returncode == 2
    assert "POWERSCHOOL_DB_PASSWORD" in one_line(result.stderr)
    assert "Hunter2Secret" not in result.everything()
