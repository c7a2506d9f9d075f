"""A kill never costs last night's file: SIGTERM and SIGINT only record the
request, the run stops at its next safe point, the swap on the server is all
or nothing, and a stop after the final rename records tonight's upload.

The asyncssh server signals the client run when a chosen SFTP operation
arrives, before answering it: the signal lands inside that request."""

import hashlib
import json
import random
import signal
import time

import pytest
from conftest import Student, remote_names

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL"), reason="POSIX signals: Windows has no SIGTERM to send"
)


def nights(app, db):
    """Two databases whose files differ, for 'last night' and 'tonight'."""
    return (
        db([Student(5000 + i, fer=16) for i in range(200)]),
        db([Student(5000 + i, fer=14) for i in range(200)]),
    )


def run_with_signal(app, sftp_server, database, operation, nth=1, signum=signal.SIGTERM, timeout=5):
    sftp_server.signal_at, sftp_server.signal_number = (operation, nth), signum
    sftp_server.operations.clear()
    started = time.monotonic()
    process = app.start("--sqlite", str(database), "--timeout", str(timeout), "--retry-wait", "0.05")
    sftp_server.signal_pid = process.pid
    try:
        _stdout, stderr = process.communicate(timeout=timeout + 20)
    finally:
        sftp_server.signal_pid = None
        if process.poll() is None:
            process.kill()
    return process.returncode, stderr, time.monotonic() - started


def state_of(app) -> dict:
    return json.loads((app.root / "clever_export.state.json").read_text())


def first_night(app, sftp_server, database) -> bytes:
    done = app.run("--sqlite", str(database), "--timeout", "5")
    assert done.returncode == 0, done.stderr
    return sftp_server.remote().read_bytes()


@pytest.mark.parametrize("posix_rename", [True, False], ids=["posix-rename", "move-aside"])
@pytest.mark.parametrize("operation", ["open", "write", "close", "rename_op", "remove"])
def test_a_sigterm_at_any_operation_keeps_a_whole_final_file(
    uploading_app, sftp_server, db, operation, posix_rename
):
    app = uploading_app
    last_night, tonight = nights(app, db)
    yesterday = first_night(app, sftp_server, last_night)
    sftp_server.posix_rename = posix_rename
    op = ("posix_rename" if posix_rename else "rename") if operation == "rename_op" else operation
    code, stderr, seconds = run_with_signal(app, sftp_server, tonight, op)
    assert code == (143 if op in sftp_server.operations else 0), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert len(stderr.strip().splitlines()) <= 1, stderr
    final = sftp_server.remote().read_bytes()
    assert final in (yesterday, app.output.read_bytes())  # last night's or tonight's, whole
    assert remote_names(sftp_server) == ["raceethnicity.txt"]  # no partial, no moved-aside file
    upload = state_of(app)["last_upload"]
    assert upload["sent_sha256"] == hashlib.sha256(final).hexdigest()  # the state says what is there
    if final != yesterday and code == 143:
        assert "after tonight's file was uploaded and recorded" in stderr
    assert seconds < 5 + 10


def test_sigint_is_exit_130(uploading_app, sftp_server, db):
    code, stderr, _ = run_with_signal(
        uploading_app, sftp_server, nights(uploading_app, db)[0], "open", signum=signal.SIGINT
    )
    assert code == 130 and "interrupted (Ctrl-C)" in stderr and "Traceback" not in stderr
    assert remote_names(sftp_server) == []


def test_a_hung_server_is_cut_within_the_timeout(uploading_app, sftp_server, db):
    sftp_server.auth_gate = __import__("threading").Event()  # the login never answers
    try:
        process = uploading_app.start(*uploading_app.base_args, "--timeout", "30")
        assert sftp_server.auth_waiting.wait(20)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        sftp_server.auth_gate.set()
    assert process.returncode == 143 and time.monotonic() - started < 10, stderr
    assert "Traceback" not in stderr


def test_a_sigterm_during_the_failure_path_ping_changes_nothing(uploading_app, sftp_server, db, ping_server):
    # The run fails (bad password) and a SIGTERM arrives while it reports: the report finishes.
    handler = ping_server.RequestHandlerClass
    original = handler.do_POST

    def slow_fail_ping(request):
        if request.path.endswith("/fail"):
            import os

            os.kill(ping_server.client_pid, signal.SIGTERM)
            time.sleep(0.3)
        original(request)

    handler.do_POST = slow_fail_ping
    try:
        process = uploading_app.start(*uploading_app.base_args, "--ping-url", ping_server.url,
                                      env={"D118_SFTP_PASSWORD": "wrong-password"})  # fmt: skip
        ping_server.client_pid = process.pid
        _, stderr = process.communicate(timeout=30)
    finally:
        handler.do_POST = original
    assert process.returncode == 4, stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert state_of(uploading_app)["last_run"]["exit_code"] == 4


def test_fifty_random_sigterms_never_lose_the_file(uploading_app, sftp_server, db):
    app = uploading_app
    databases = nights(app, db)
    previous = first_night(app, sftp_server, databases[0])
    chooser = random.Random(20261201)
    started = time.monotonic()
    operations = ["open", "write", "close", "posix_rename", "rename", "remove", "fsetstat"]
    stopped = 0
    for run in range(50):
        sftp_server.posix_rename = chooser.random() < 0.5
        database = databases[(run + 1) % 2]
        code, stderr, seconds = run_with_signal(
            app, sftp_server, database, chooser.choice(operations), timeout=3
        )
        assert code in (0, 130, 143), (run, stderr)
        stopped += code == 143
        assert seconds < 3 + 10, run
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        final = sftp_server.remote().read_bytes()
        assert final in (previous, app.output.read_bytes()), run
        assert hashlib.sha256(final).hexdigest() == state_of(app)["last_upload"]["sent_sha256"], run
        assert "raceethnicity.txt" in remote_names(sftp_server)
        previous = final
    assert stopped >= 20  # the signals landed: most runs were stopped, not finished
    assert time.monotonic() - started < 120


@pytest.mark.parametrize("posix_rename", [True, False], ids=["posix-rename", "move-aside"])
def test_a_stop_during_a_rename_the_server_answers_late_records_tonights_upload(
    uploading_app, sftp_server, db, posix_rename
):
    app = uploading_app
    last_night, tonight = nights(app, db)
    first_night(app, sftp_server, last_night)
    sftp_server.posix_rename = posix_rename
    operation = "posix_rename" if posix_rename else "rename"
    sftp_server.slow[operation] = 4.5  # past the stop's 2 s grace, inside its 6 s for a rename
    code, stderr, seconds = run_with_signal(
        app, sftp_server, tonight, operation, nth=1 if posix_rename else 2, timeout=10
    )
    assert code == 143 and "after tonight's file was uploaded and recorded" in stderr, stderr
    assert seconds < 5 + 12
    assert sftp_server.remote().read_bytes() == app.output.read_bytes()
    assert remote_names(sftp_server) == ["raceethnicity.txt"]
    upload = state_of(app)["last_upload"]
    assert upload["sent_sha256"] == hashlib.sha256(app.output.read_bytes()).hexdigest()


def test_a_stop_during_the_writes_closes_the_temporary_file_before_removing_it(
    uploading_app, sftp_server, db
):
    app = uploading_app
    code, stderr, _ = run_with_signal(app, sftp_server, nights(app, db)[0], "write")
    assert code == 143 and len(stderr.strip().splitlines()) == 1, stderr
    after = sftp_server.operations[sftp_server.operations.index("write") :]
    assert "close" in after and "remove" in after and after.index("close") < after.index("remove"), after
    assert remote_names(sftp_server) == []
