"""Surviving the night: retries, timeouts, overlapping runs, the safety guard,
--check, monitoring pings and log rotation, against real loopback servers."""

import json
import os
import shutil
import threading

import pytest
from conftest import (
    SECRET_SFTP_PASSWORD,
    Student,
    big_export,
    many_students,
    one_line,
    posix_paths,
    posix_signals,
    remote_names,
    run_main,
    temporaries,
)
from conftest import clever_export as ce


def big_export_app(uploading_app, db):
    """~200 KB of output, so an upload takes several SFTP writes and can be cut."""
    uploading_app.db_path = db(many_students(15_000))
    uploading_app.base_args = (
        "--sqlite",
        str(uploading_app.db_path),
        "--timeout",
        "5",
        "--retry-wait",
        "0.05",
    )
    return uploading_app


def test_connection_cut_mid_upload_is_retried_and_lands_whole(uploading_app, sftp_server, db):
    app = big_export_app(uploading_app, db)
    sftp_server.cut_connections = {1}
    result = app.run(*app.base_args)
    assert result.returncode == 0, result.stderr
    assert sftp_server.connections == 2
    assert "WARNING upload attempt 1 of 3 failed" in result.log
    assert app.output.stat().st_size > 4 * sftp_server.cut_after_bytes
    assert sftp_server.remote().read_bytes() == app.output.read_bytes()
    assert remote_names(sftp_server) == ["raceethnicity.txt"]


def test_connection_cut_on_every_attempt_exits_4_and_keeps_the_previous_file(uploading_app, sftp_server, db):
    app = big_export_app(uploading_app, db)
    sftp_server.remote().write_bytes(b"last night's complete file\n")
    sftp_server.cut_connections = "all"
    result = app.run(*app.base_args, "--retries", "2")
    assert result.returncode == 4
    assert "gave up after 2 attempts" in result.stderr.strip().splitlines()[-1]
    assert sftp_server.connections == 2
    assert sftp_server.remote().read_bytes() == b"last night's complete file\n"
    assert SECRET_SFTP_PASSWORD not in result.everything()


def test_a_partial_file_from_a_failed_night_is_cleaned_up_by_the_next_success(uploading_app, sftp_server, db):
    app = big_export_app(uploading_app, db)
    sftp_server.cut_connections = "all"
    assert app.run(*app.base_args, "--retries", "1").returncode == 4
    assert ".raceethnicity.txt.partial" in remote_names(sftp_server)
    sftp_server.cut_connections = set()
    assert app.run(*app.base_args).returncode == 0
    assert remote_names(sftp_server) == ["raceethnicity.txt"]


def test_a_silent_sftp_server_exits_4_in_bounded_time(app, db, silent_listener):
    app.known_hosts.write_text(f"[127.0.0.1]:{silent_listener} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE5m\n")
    env = {"D118_SFTP_ADDRESS": "127.0.0.1", "D118_SFTP_PORT": str(silent_listener),
           "D118_SFTP_USERNAME": "u", "D118_SFTP_PASSWORD": SECRET_SFTP_PASSWORD}  # fmt: skip
    result = app.run("--sqlite", str(db([Student(1)])), "--timeout", "1", "--retries", "2",
                     "--retry-wait", "0", env=env, timeout=30)  # fmt: skip
    assert result.returncode == 4
    assert "gave up after 2 attempts" in result.stderr
    assert result.seconds < 10


def test_overlapping_runs_second_exits_75_and_touches_nothing(uploading_app, sftp_server, ping_server):
    sftp_server.auth_gate = threading.Event()
    first = uploading_app.start(*uploading_app.base_args, "--timeout", "30")
    try:
        assert sftp_server.auth_waiting.wait(20), "the first run never reached the server"
        output_before = uploading_app.output.stat().st_mtime_ns
        state = uploading_app.root / "clever_export.state.json"
        state_before = state.read_bytes()
        status = uploading_app.run("--status")
        assert "running now: a run started" in status.stdout, status.stdout
        second = uploading_app.run(*uploading_app.base_args, "--ping-url", ping_server.url)
        assert second.returncode == 75
        assert "another clever_export run holds" in second.stderr
        assert uploading_app.output.stat().st_mtime_ns == output_before
        assert state.read_bytes() == state_before  # the lock's holder alone writes the state
        assert ping_server.pings == []  # a refused run is not a failed night
    finally:
        sftp_server.auth_gate.set()
        first.communicate(timeout=30)
    assert first.returncode == 0
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    status = uploading_app.run("--status")
    assert status.returncode == 0 and "exit 0" in status.stdout and "running now" not in status.stdout


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(uploading_app, sftp_server):
    sftp_server.auth_gate = threading.Event()
    first = uploading_app.start(*uploading_app.base_args, "--timeout", "30")
    assert sftp_server.auth_waiting.wait(20)
    first.kill()  # as a crash or a reboot would
    first.communicate(timeout=10)
    sftp_server.auth_gate.set()
    assert (uploading_app.root / "clever_export.lock").exists()
    assert uploading_app.run(*uploading_app.base_args).returncode == 0


def write_state(app, students):
    (app.root / "clever_export.state.json").write_text(json.dumps({"last_upload": {"students": students}}))


def test_collapsed_count_is_refused_then_forced(uploading_app, sftp_server):
    write_state(uploading_app, 100)  # last night: 100 students; tonight: 10
    sftp_server.remote().write_bytes(b"last night\n")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 5
    assert "10 students, 90.0% fewer than the 100 of the last upload" in result.stderr
    assert sftp_server.remote().read_bytes() == b"last night\n" and sftp_server.connections == 0
    assert uploading_app.output.read_text().count("\n") == 10  # kept for inspection
    forced = uploading_app.run(*uploading_app.base_args, "--force")
    assert forced.returncode == 0
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    state = json.loads((uploading_app.root / "clever_export.state.json").read_text())
    assert state["last_upload"]["students"] == 10


def test_drop_within_the_limit_uploads_and_the_limit_is_a_flag(uploading_app, sftp_server):
    write_state(uploading_app, 12)  # 16.7% fewer
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    write_state(uploading_app, 12)
    assert uploading_app.run(*uploading_app.base_args, "--max-drop", "10").returncode == 5


def test_zero_students_exits_5_and_uploads_nothing(uploading_app, sftp_server, db):
    result = uploading_app.run("--sqlite", str(db([Student(1, enroll=2)])), "--timeout", "5")
    assert result.returncode == 5 and "0 students" in result.stderr
    assert sftp_server.connections == 0 and remote_names(sftp_server) == []


def test_check_while_a_run_holds_the_lock_says_so_once(uploading_app, sftp_server):
    import filelock

    lock_path = uploading_app.root / "clever_export.lock"
    with filelock.FileLock(str(lock_path)):  # a second open file: held, as by another process
        result = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path), "--timeout", "5")
    assert result.returncode == 0, result.stdout
    assert [line for line in result.stdout.splitlines() if str(lock_path) in line] == [
        f"[WARN] lock {lock_path} is held by a run now; it is usable once that run ends"
    ]


def test_check_passes_on_a_good_setup(uploading_app, sftp_server):
    result = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path), "--timeout", "5")
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("settings: ")
    checks = [line for line in lines if line.startswith("[")]
    assert checks and all(line.startswith("[ ok ]") for line in checks) and lines[-1] == "all checks passed"
    for label in ("SFTP variables", "known_hosts", "table s_il_stu_x readable", "SFTP login",
                  "remote directory /sftp/clever/ writable"):  # fmt: skip
        assert any(label in line for line in lines), label
    assert remote_names(sftp_server) == []  # the probe file was removed
    assert not uploading_app.output.exists()


def test_check_reports_each_failure_and_exits_with_the_first(uploading_app, sftp_server):
    env = {"D118_SFTP_PASSWORD": "wrong"}
    result = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path), "--timeout", "5", env=env)
    assert result.returncode == 4
    assert any(line.startswith("[FAIL] SFTP login") for line in result.stdout.splitlines())
    assert "[ ok ] table students readable" in result.stdout
    uploading_app.known_hosts.write_text("# nothing\n")
    result = uploading_app.run("--check", "--remote-dir", "/nope", env={"POWERSCHOOL_READ_USER": "x"})
    assert result.returncode == 2  # missing database variables come first
    assert "[FAIL] database variables set" in result.stdout
    assert "[FAIL] known_hosts" in result.stdout


def test_check_finds_an_unwritable_remote_directory(uploading_app, sftp_server):
    result = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path), "--remote-dir", "/missing")
    assert result.returncode == 4
    assert "[FAIL] remote directory /missing writable" in result.stdout


@pytest.mark.parametrize(
    ("url", "heartbeat"),
    [("https://hc-ping.com/0b1c", False), ("HTTPS://hc-ping.com/0b1c", False),
     ("http://[::1]:8000/ping/abc", False), ("http://127.0.0.1/", False),
     ("https://kuma.district.org/api/push/Ab12?status=up&msg=OK&ping=", True),
     ("https://cronitor.link/p/KEY/nightly?state=complete", True),
     ("https://hc-ping.com/0b1c-secret/slug?create=1", True)],
)  # fmt: skip
def test_ping_urls_that_can_be_sent_are_accepted(uploading_app, sftp_server, url, heartbeat):
    result = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path), "--ping-url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    kind = "a heartbeat (a query string): sent on success only" if heartbeat else "Healthchecks-style"
    assert f"[ ok ] ping URL to {ce.ping_host(url)}: {kind}" in result.stdout
    assert ce.is_heartbeat(url) is heartbeat


def test_a_heartbeat_url_is_fetched_as_given_on_success_only(uploading_app, sftp_server, ping_server):
    url = ping_server.url.replace("/ping/abc", "/api/push/Ab12?status=up&msg=OK&ping=")
    assert uploading_app.run(*uploading_app.base_args, "--ping-url", url).returncode == 0
    assert ping_server.pings == [("GET /api/push/Ab12?status=up&msg=OK&ping=", "")]  # no /start
    ping_server.pings.clear()
    failed = uploading_app.run(
        *uploading_app.base_args, "--ping-url", url, env={"D118_SFTP_PASSWORD": "wrong"}
    )
    assert failed.returncode == 4 and ping_server.pings == []  # no /fail: the monitor alerts on silence


def test_pings_start_success_and_fail_with_log_lines(uploading_app, sftp_server, ping_server):
    assert uploading_app.run(*uploading_app.base_args, "--ping-url", ping_server.url).returncode == 0
    assert [path for path, _ in ping_server.pings] == ["/ping/abc/start", "/ping/abc"]
    ping_server.pings.clear()
    result = uploading_app.run(*uploading_app.base_args, "--ping-url", ping_server.url,
                               env={"D118_SFTP_PASSWORD": "wrong"})  # fmt: skip
    assert result.returncode == 4
    assert [path for path, _ in ping_server.pings] == ["/ping/abc/start", "/ping/abc/fail"]
    assert "SFTP login as clever" in ping_server.pings[1][1] and "export started" in ping_server.pings[1][1]


def test_a_failing_ping_only_warns(uploading_app, sftp_server, silent_listener):
    url = "http://127.0.0.1:1/unreachable"
    result = uploading_app.run(*uploading_app.base_args, "--ping-url", url)
    assert result.returncode == 0
    assert "WARNING: monitoring ping" in result.stderr


@pytest.mark.parametrize(
    "url", ["hc-ping.com/0b1c-secret-uuid", "ftp://hc-ping.com/0b1c-secret-uuid", "https:///0b1c-secret-uuid",
            "http://[::1/0b1c-secret-uuid", "https://hc-ping.com/0b1c-secret-uuid#x",
            "https://user:secret@hc-ping.com/u", "https://hc-ping.com/0b1c-secret-uuid?",
            "https://hc-ping.com:abc/secret", "https://hc-ping.com/secret uuid"],
)  # fmt: skip
def test_a_ping_url_that_cannot_be_sent_exits_2_before_anything_runs(uploading_app, sftp_server, url):
    """A mistyped ping URL would otherwise fail every night with a log warning only."""
    result = uploading_app.run(*uploading_app.base_args, "-q", "--ping-url", url)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "--ping-url" in line and "https://" in line and "secret" not in line  # the path is a credential
    assert not uploading_app.output.exists() and sftp_server.connections == 0


def test_logs_rotate_and_stay_bounded(monkeypatch, tmp_path, db):
    monkeypatch.setattr(ce, "LOG_MAX_BYTES", 2_000)
    path = str(db([Student(1)]))
    for _ in range(40):
        run_main(tmp_path, "--sqlite", path, "--no-upload", "-q", "-v")
    logs = sorted(p.name for p in tmp_path.glob("run.log*"))
    assert logs == ["run.log", *(f"run.log.{i}" for i in range(1, ce.LOG_BACKUPS + 1))]
    assert all(p.stat().st_size <= 2_000 + 1_000 for p in tmp_path.glob("run.log*"))


def test_a_state_file_that_cannot_be_read_is_never_overwritten(uploading_app, sftp_server):
    # A state file the run cannot read holds the last upload's count: recording the
    # failed run over it would silently erase the guard's memory.
    state = uploading_app.root / "clever_export.state.json"
    state.write_text('{"last_upload": {"students": 4210, "at": "2026-11-29T01:30:00+0000"')  # cut short
    before = state.read_bytes()
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 5 and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert state.read_bytes() == before
    assert uploading_app.run(*uploading_app.base_args).returncode == 5  # still refusing


def test_status_shows_a_killed_run_as_one(uploading_app, sftp_server):
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    sftp_server.auth_gate = threading.Event()
    process = uploading_app.start(*uploading_app.base_args)
    try:
        assert sftp_server.auth_waiting.wait(20)
        process.kill()  # SIGKILL; TerminateProcess on Windows
        process.wait(10)
    finally:
        sftp_server.auth_gate.set()
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
    status = uploading_app.run("--status")
    assert status.returncode == 143, status.stdout
    assert "recorded no outcome" in status.stdout and "killed" in status.stdout


def test_a_dry_run_does_not_replace_last_nights_record(uploading_app, sftp_server):
    assert uploading_app.run(*uploading_app.base_args, env={"D118_SFTP_PASSWORD": "wrong"}).returncode == 4
    assert uploading_app.run(*uploading_app.base_args, "--dry-run").returncode == 0
    assert uploading_app.run(*uploading_app.base_args, "--no-upload").returncode == 0
    status = uploading_app.run("--status")
    assert status.returncode == 4 and "exit 4" in status.stdout


@pytest.mark.parametrize("max_age", ["nan", "inf", "-5"])
def test_status_refuses_a_meaningless_max_age(app, max_age):
    result = app.run("--status", "--max-age", max_age)
    assert result.returncode == 2 and "--max-age" in result.stderr


def test_an_upload_time_in_the_future_fails_max_age(uploading_app, sftp_server):
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    state_path = uploading_app.root / "clever_export.state.json"
    state = json.loads(state_path.read_text())
    state["last_upload"]["at"] = "2099-01-01T01:30:00+0000"
    state_path.write_text(json.dumps(state))
    result = uploading_app.run("--status", "--max-age", "26")
    assert result.returncode == 7 and "in the future" in result.stdout


def test_check_reads_the_state_file_and_tries_the_output_folder(uploading_app, sftp_server):
    state = uploading_app.root / "clever_export.state.json"
    state.write_text("not json")
    result = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path), "--timeout", "5")
    assert result.returncode == 5
    assert f"[FAIL] state file {state} readable" in result.stdout
    assert f"[ ok ] output folder {uploading_app.root} writable" in result.stdout
    assert f"[ ok ] lock {uploading_app.root / 'clever_export.lock'} usable" in result.stdout
    assert list(uploading_app.root.glob(".*.tmp")) == []
    status = uploading_app.run("--status")  # the same code the night, --check and the docs give
    assert status.returncode == 5 and "cannot be read" in status.stdout


def test_status_asks_the_lock_not_a_pid_that_may_be_reused(uploading_app, sftp_server):
    # A killed run left "running" behind; its PID now belongs to another live process (pid 1, or the test runner).
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    state_path = uploading_app.root / "clever_export.state.json"
    state = json.loads(state_path.read_text())
    for pid in (1, os.getppid()):
        state["running"] = {"started": "2026-12-01T01:30:00+0000", "pid": pid}
        state_path.write_text(json.dumps(state))
        status = uploading_app.run("--status", "--max-age", "26")
        assert "running now" not in status.stdout and "recorded no outcome: it was killed" in status.stdout
        assert status.returncode == 143


# =============================================================================
# 8. The guard never weakens on a damaged state file
# =============================================================================


@pytest.mark.parametrize(
    "text",
    ['{"last_upload": {"students": 1e999}}', "[1,2]", "not json at all", '{"last_upload": {"students": -3}}'],
    ids=["infinite", "list", "not-json", "negative"],
)
def test_a_damaged_state_file_exits_5_and_force_rewrites_it(uploading_app, sftp_server, text):
    state = uploading_app.root / "clever_export.state.json"
    state.write_text(text)
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 5, result.stderr
    line = one_line(result.stderr)
    assert str(state) in line and "--force" in line
    assert sftp_server.connections == 0 and remote_names(sftp_server) == []
    forced = uploading_app.run(*uploading_app.base_args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    record = json.loads(state.read_text())  # valid JSON again
    assert record["last_upload"]["students"] == 10
    assert record["last_run"]["exit_code"] == 0
    again = uploading_app.run(*uploading_app.base_args)  # and the guard works from it
    assert again.returncode == 0, again.stderr


# =============================================================================
# 12. SIGTERM
# =============================================================================


@posix_signals
def test_sigterm_exits_143_logs_pings_fail_and_leaves_no_temporary(uploading_app, sftp_server, ping_server):
    sftp_server.auth_gate = threading.Event()
    process = uploading_app.start(*uploading_app.base_args, "--timeout", "30", "--ping-url", ping_server.url)
    try:
        assert sftp_server.auth_waiting.wait(20), "the run never reached the server"
        process.terminate()
        _stdout, stderr = process.communicate(timeout=30)
    finally:
        sftp_server.auth_gate.set()
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 143, stderr
    line = one_line(stderr)
    assert "terminated" in line
    log = uploading_app.log()
    assert any(" ERROR terminated" in entry for entry in log.splitlines())
    assert [path for path, _ in ping_server.pings] == ["/ping/abc/start", "/ping/abc/fail"]
    assert "terminated" in ping_server.pings[1][1]
    assert remote_names(sftp_server) == []
    assert temporaries(uploading_app.root) == []
    state = json.loads((uploading_app.root / "clever_export.state.json").read_text())
    assert state["last_run"]["exit_code"] == 143 and "last_upload" not in state


def test_a_leftover_temporary_beside_the_output_is_removed_by_the_next_run(uploading_app, sftp_server):
    planted = uploading_app.root / ".raceethnicity.txt.abc123.tmp"
    planted.write_text("half a file from a killed run\n")
    state_leftover = uploading_app.root / ".clever_export.state.json.x1y2z3.tmp"
    state_leftover.write_text("{")
    unrelated = uploading_app.root / ".other.txt.abc123.tmp"
    unrelated.write_text("not ours\n")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert not planted.exists() and not state_leftover.exists()
    assert unrelated.exists()  # only the script's own temporaries
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()


def test_a_leftover_copy_of_the_upload_is_removed_by_the_next_run(uploading_app, sftp_server):
    planted = uploading_app.root / ".clever_export.sent.txt.abc123.tmp"
    planted.write_text("1001\tN\tW\tN\n")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert not planted.exists()


# =============================================================================
# 14. --quiet stays quiet after a retried upload
# =============================================================================


def test_quiet_is_quiet_on_success_after_a_retry(uploading_app, sftp_server, db):
    app = big_export(uploading_app, db, 3000)
    sftp_server.cut_connections = {1}
    sftp_server.cut_after_bytes = 20_000
    result = app.run(*app.base_args, "-q")
    assert result.returncode == 0, result.stderr
    assert app.output.stat().st_size > sftp_server.cut_after_bytes
    assert result.stdout == "" and result.stderr == ""
    assert "WARNING upload attempt 1 of 3 failed" in result.log
    assert sftp_server.connections == 2
    assert sftp_server.remote().read_bytes() == app.output.read_bytes()


# =============================================================================
# 15. --check names the missing remote directory in the failure line
# =============================================================================


def test_check_with_the_remote_directory_missing_names_it(uploading_app, sftp_server):
    sftp_server.remote().parent.rmdir()
    result = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path), "--timeout", "5")
    assert result.returncode == 4, result.stdout
    failures = [line for line in result.stdout.splitlines() if line.startswith("[FAIL]")]
    assert len(failures) == 1, result.stdout
    label, _, message = failures[0].partition(": ")
    assert label == "[FAIL] remote directory /sftp/clever/ writable"
    assert "/sftp/clever/" in message and "create the remote directory or fix --remote-dir" in message
    assert result.stdout.splitlines()[-1] == "some checks failed"
    assert "Traceback" not in result.everything()


# =============================================================================
# 16. Found by review: paths out of reach, a disk with no room, names that are not hosts
# =============================================================================


def test_a_state_path_the_account_cannot_reach_is_one_line_exit_2(uploading_app, sftp_server, tmp_path):
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("a folder the account cannot enter needs root to set up, then an unprivileged run")
    # Root reaches everything; a path too long for the system is out of reach for any account.
    result = uploading_app.run(
        *uploading_app.base_args, "--state-file", str(tmp_path / ("x" * 300) / "s.json")
    )
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "--state-file" in line and "cannot be reached (File name too long)" in line


def test_check_fails_on_a_disk_with_no_room_as_the_night_does(uploading_app, sftp_server, tiny_tmpfs):
    (tiny_tmpfs / "filler").write_bytes(b"x" * 12_000)
    args = (*uploading_app.base_args, "--output", str(tiny_tmpfs / "out.txt"))
    checked = uploading_app.run("--check", *args)
    assert checked.returncode == 2 and "[FAIL] output folder" in checked.stdout
    assert "No space left on device" in checked.stdout
    assert list(tiny_tmpfs.iterdir()) == [tiny_tmpfs / "filler"]


@pytest.mark.parametrize(
    ("address", "words"),
    [("sftp..district.org", "is not a valid host name or address"), ("127.0.0.1:2222", "holds a port")],
)
def test_an_sftp_address_that_is_not_a_host_exits_2(uploading_app, sftp_server, address, words):
    for mode in ((), ("--check",), ("--show-host-key",)):
        result = uploading_app.run(*mode, *uploading_app.base_args, env={"D118_SFTP_ADDRESS": address})
        assert "Traceback" not in result.stderr + result.stdout
        if mode == ("--check",):
            assert words in result.stdout and result.returncode == 2
        else:
            assert result.returncode == 2 and words in one_line(result.stderr)


def test_check_says_a_first_run_has_no_state_file_yet(uploading_app, sftp_server):
    state = uploading_app.root / "clever_export.state.json"
    first = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path))
    assert f"[ ok ] state file {state}: none yet (first run)" in first.stdout and first.returncode == 0
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    later = uploading_app.run("--check", "--sqlite", str(uploading_app.db_path))
    assert f"[ ok ] state file {state} readable" in later.stdout


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="a run as root needs root")
def test_a_run_as_root_in_a_set_up_another_account_owns_is_refused_before_it_writes(app, db, sftp_account):
    database = db([Student(1001, fer=16)])
    account = sftp_account.user
    for path in (app.root, *app.root.rglob("*")):
        shutil.chown(path, account, account)
    before = sorted(path.name for path in app.root.iterdir())
    result = app.run("--sqlite", str(database), "--ping-url", "https://hc-ping.com/0b1c-secret")  # a night
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert f"{app.root} belongs to {account}" in line and "nothing was done" in line
    assert f"sudo -u {account} " in line or f"runuser -u {account} -- " in line
    assert line.endswith(f"{app.root / 'clever_export.py'} …") and str(database) not in line  # no flag echoed
    assert sorted(path.name for path in app.root.iterdir()) == before  # no log, state, lock or output
    assert "belongs to" not in app.run("--status").stderr  # reading is no harm
    for path in (app.root, *app.root.rglob("*")):
        shutil.chown(path, 0, 0)  # a set-up root owns (root's own cron job) runs
    assert app.run("--sqlite", str(database), "--no-upload").returncode == 0


def test_a_failure_message_that_is_not_utf8_still_pings_fail_without_a_traceback(app, ping_server):
    result = app.run(
        "--sqlite", "/tmp/\udcff-missing.sqlite", "--no-upload", "-q", "--ping-url", ping_server.url
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Exception in thread" not in result.stderr
    assert [path for path, _ in ping_server.pings] == ["/ping/abc/start", "/ping/abc/fail"]


@posix_paths
def test_quiet_with_no_log_and_a_failing_alert_prints_one_line(app, db):
    env = {"CLEVER_NOTIFY": "json://127.0.0.1:1/never"}
    result = app.run(
        "--sqlite", str(db([Student(1)])), "--no-upload", "-q", "--log-file", "/proc/clever.log", env=env
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
