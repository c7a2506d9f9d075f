"""The command line: exit codes, one-line errors, secrets, logs, Oracle failures."""

import logging
import re
import threading
import warnings

import pytest
from conftest import ORACLE_ENV, SECRET_DB_PASSWORD, Student, one_line, run_main
from conftest import clever_export as ce


def test_help_reads_like_a_manual(app):
    result = app.run("--help")
    assert result.returncode == 0
    for text in (
        "--demo",
        "--show-host-key",
        "POWERSCHOOL_PROD_DB",
        "D118_SFTP_KEY_FILE",
        "exit codes",
        "75",
    ):
        assert text in result.stdout


def test_bad_flag_exits_2_with_one_line(app):
    result = app.run("--no-such-flag")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("missing", "env"),
    [("POWERSCHOOL_PROD_DB", ORACLE_ENV),
     ("POWERSCHOOL_DB_PASSWORD", {"POWERSCHOOL_READ_USER": "x", "POWERSCHOOL_PROD_DB": "h:1521/PS"})],
)  # fmt: skip
def test_missing_database_variable_exits_2_naming_it(app, missing, env):
    result = app.run("--no-upload", env=env)
    assert result.returncode == 2
    assert f"environment variable {missing}" in one_line(result.stderr)
    assert SECRET_DB_PASSWORD not in result.everything()


def test_missing_sftp_variable_exits_2_before_touching_the_database(app, db):
    result = app.run("--sqlite", str(db([Student(1)])), env={"D118_SFTP_ADDRESS": "127.0.0.1"})
    assert result.returncode == 2
    assert "D118_SFTP_USERNAME" in one_line(result.stderr)
    assert not app.output.exists()


def test_no_upload_needs_no_sftp_settings(app, db):
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload")  # no D118_* variables at all
    assert result.returncode == 0 and result.stderr == ""
    assert app.output.read_bytes() == b"1\tN\tW\tN\n"
    assert "uploaded" not in result.log and "D118_" not in result.everything()


def test_unreachable_oracle_exits_3_quickly(app):
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "127.0.0.1:1/PSPRODDB"}
    result = app.run("--no-upload", "--timeout", "5", env=env, timeout=30)
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "cannot connect to database 127.0.0.1:1/PSPRODDB" in line and "POWERSCHOOL_PROD_DB" in line
    assert result.seconds < 15
    assert SECRET_DB_PASSWORD not in result.everything()


def test_silent_oracle_listener_exits_3_in_bounded_time(app, silent_listener):
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": f"127.0.0.1:{silent_listener}/PSPRODDB"}
    result = app.run("--no-upload", "--timeout", "2", env=env, timeout=30)
    assert result.returncode == 3
    assert "the connection to database 127.0.0.1" in one_line(result.stderr)
    assert "did not finish within 2 seconds" in one_line(result.stderr)
    assert result.seconds < 12
    assert SECRET_DB_PASSWORD not in result.everything()


def test_query_failure_exits_3(app, tmp_path):
    import sqlite3

    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).close()
    result = app.run("--sqlite", str(empty), "--no-upload")
    assert result.returncode == 3
    assert "the export query failed: no such table" in one_line(result.stderr)


def test_log_is_appended_timestamped_with_level_names(app, db):
    path = str(db([Student(1), Student(2, first="test")]))
    app.run("--sqlite", path, "--no-upload")
    app.run("--sqlite", path, "--no-upload", "--exclude-name", "nobody")
    summaries = [line for line in app.log().splitlines() if " summary: " in line]
    assert len(summaries) == 2
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO summary: written 1, skipped 1, ", summaries[0]
    )
    assert "written 2, skipped 0" in summaries[1]
    assert re.search(r"seconds \d+\.\d\d$", summaries[0])


def test_errors_are_logged_with_level_error(app):
    app.run("--no-upload")
    assert re.search(r" ERROR environment variable POWERSCHOOL_READ_USER", app.log())


def test_verbose_adds_per_student_detail_to_the_log(app, db):
    result = app.run("--sqlite", str(db([Student(1013, fer=15, fedethnicity=-1)])), "--no-upload", "-v")
    assert "student 1013: fedethnicity -1 -> Hispanic_Latino blank (unanswered (-1))" in result.log
    assert "state_race 15 -> Race P" in result.log
    assert "fedethnicity" not in result.stdout  # detail goes to the log, not to cron's mail


def test_quiet_prints_nothing_on_success(app, db):
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--quiet")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    assert "summary:" in result.log


def test_log_file_flag(app, db, tmp_path):
    log = tmp_path / "logs" / "export.log"
    assert app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--log-file", str(log)).returncode == 0
    assert "summary:" in log.read_text()


def test_unexpected_error_exits_1_with_one_line_and_the_traceback_in_the_log(
    monkeypatch, capsys, tmp_path, db
):  # fmt: skip
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(ce.StudentMapper, "repeated_numbers", broken)
    assert run_main(tmp_path, "--sqlite", str(db([Student(1)])), "--no-upload") == 1
    stderr = capsys.readouterr().err
    assert "unexpected error: ZeroDivisionError: a bug" in one_line(stderr)
    assert "Traceback" in (tmp_path / "run.log").read_text()


def test_version(app):
    result = app.run("--version")
    assert result.returncode == 0 and result.stdout.startswith(f"clever_export.py {ce.__version__}")


def test_help_lists_every_exit_code(app):
    result = app.run("--help")
    for code, meaning in ce.EXIT_CODES.items():
        assert f"{code:>3}  0x{code:02X}  {meaning}" in result.stdout  # Task Scheduler shows hex


def test_help_works_under_python_oo(app):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-OO", str(app.root / "clever_export.py"), "--help"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 0 and "exit codes" in done.stdout, done.stderr


def test_a_missing_module_is_a_configuration_problem_not_a_bug(app):
    import subprocess
    import sys

    probe = (
        "import sys; sys.modules['filelock'] = None\n"  # as if requirements.txt was never installed
        f"sys.argv = ['clever_export.py', '--demo']\n"
        f"import runpy; runpy.run_path({str(app.root / 'clever_export.py')!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert "filelock" in line and "requirements.txt" in line and "bug" not in line


def test_escape_text_shows_controls_and_direction_overrides():
    assert ce.escape_text("a\nb\x1b[31m\u202eevil") == "a\\x0ab\\x1b[31m\\u202eevil"
    assert ce.escape_text("Zoë Muñoz") == "Zoë Muñoz"


def test_paramiko_gets_one_quiet_handler_however_many_runs(tmp_path):
    import logging

    for _ in range(3):
        ce.setup_logging(tmp_path / "x.log", verbose=False, quiet=True)
        ce.close_logging()
    handlers = logging.getLogger("paramiko").handlers
    assert sum(isinstance(handler, logging.NullHandler) for handler in handlers) == 1


def test_a_run_in_the_tests_process_still_shows_what_the_interpreter_prints(app, monkeypatch):
    """App.run calls main() in this process: a thread's traceback, a library's warning
    and its log record must still reach the run's stderr, as they would reach cron mail."""

    def noisy_main(argv, environ):
        failing = threading.Thread(target=lambda: 1 / 0)
        failing.start()
        failing.join()
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        logging.getLogger("a.library").warning("a library's log record")
        print(ce.beside_script("x"))
        return 0

    monkeypatch.setattr(ce, "main", noisy_main)
    result = app.run()
    for printed in ("ZeroDivisionError", "a library's warning", "a library's log record"):
        assert printed in result.stderr
    assert result.stdout.strip() == str(app.root / "x")  # the deployed copy's folder
    assert ce.Path(ce.__file__).resolve().parent == ce.SCRIPT_DIR  # and back after the run
