"""Every wait has an end: each outside call is bounded in wall-clock time by
--timeout, whatever the peer does (never answers, or trickles a line every 2 s
so that no per-read timeout ever fires), and a stop ends any run within
STOP_SECONDS with 143 or 130, blaming nothing it did on a setting or a server.

The slow peers are real servers on loopback (conftest.SlowPeer): an SMTP relay
and an HTTP endpoint that trickle, an SSH server that trickles lines before its
banner, TCP listeners that accept and never answer (as the database and as the
SFTP server), and a query that SQLite would take minutes to finish."""

import json
import random
import signal
import threading
import time

import pytest
from conftest import (
    ORACLE_ENV,
    SECRET_DB_PASSWORD,
    TRICKLE_HTTP,
    TRICKLE_SMTP,
    TRICKLE_SSH,
    App,
    Student,
    one_line,
    posix_signals,
)
from conftest import clever_export as ce

# The built-in query, with a WHERE that SQLite needs minutes for: counting to
# ten billion in a recursive CTE, which only interrupt() ends.
SLOW_QUERY_PROFILE = """\
[students]
enroll_statuses = [0]
query = '''
SELECT s.id, s.dcid, s.student_number, s.first_name, s.last_name, s.enroll_status, s.fedethnicity,
       d.fer state_race, x.lep
FROM students s
LEFT JOIN s_il_stu_demographics_x d ON d.studentsdcid = s.dcid
LEFT JOIN s_il_stu_x x ON x.studentsdcid = s.dcid
WHERE (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000000)
       SELECT COUNT(*) FROM n) > 0'''
"""

BLAME = ("check ", "[FAIL]", "did not finish", "failed", "refused", "Traceback")


def host_key_line(port: int) -> str:
    """A known_hosts line for a peer on loopback: any key, since a slow peer never shows one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    return f"[127.0.0.1]:{port} {public.decode()}\n"


def sftp_env(app: App, port: int) -> dict[str, str]:
    app.known_hosts.write_text(host_key_line(port))
    return {"D118_SFTP_ADDRESS": "127.0.0.1", "D118_SFTP_PORT": str(port),
            "D118_SFTP_USERNAME": "clever", "D118_SFTP_PASSWORD": "not-used-pw"}  # fmt: skip


def smtp_target(port: int) -> str:
    return (
        f"mailto://alerts:Smtp-pw@127.0.0.1:{port}?smtp=127.0.0.1&mode=insecure"
        "&from=clever@district.example&to=it@district.example"
    )


def state_of(app: App) -> dict:
    return json.loads((app.root / "clever_export.state.json").read_text(encoding="utf-8"))


# --- Deadlines: no signal; these run in the Windows run of CI too -------------------


def failing_night_env(app: App, *relays) -> dict[str, str]:
    """A night that fails (exit 2: its SQLite file is missing) and alerts `relays`."""
    return {**sftp_env(app, 2), "CLEVER_NOTIFY": " ".join(smtp_target(relay.port) for relay in relays)}


def test_a_trickling_smtp_alert_is_cut_at_the_deadline_and_the_failure_is_recorded_first(app, db, slow_peer):
    relay = slow_peer(*TRICKLE_SMTP)
    env = failing_night_env(app, relay)
    result = app.run("--sqlite", "missing.sqlite", "--timeout", "3", "--quiet", env=env)
    assert relay.accepted.is_set()  # the alert went out, and the relay kept it talking
    assert result.returncode == 2 and 3 <= result.seconds < 3 + 4, result
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "SQLite file" in result.stderr  # --quiet: the night's one line, whatever the alert did
    assert "the alert to mailto://127.0.0.1" in result.log and "did not finish within 3 seconds" in result.log
    assert state_of(app)["last_run"]["exit_code"] == 2


def test_alerts_go_out_together_and_take_the_slowest_ones_time(app, db, slow_peer):
    relays = [slow_peer(*TRICKLE_SMTP) for _ in range(3)]
    result = app.run("--sqlite", "missing.sqlite", "--timeout", "2", env=failing_night_env(app, *relays))
    assert all(relay.accepted.is_set() for relay in relays)
    assert result.returncode == 2 and result.seconds < 2 + 3, result  # not 3 x 2 s
    assert result.log.count("did not finish within 2 seconds") == 3


def test_a_trickling_ping_is_cut_at_the_deadline_at_the_start_and_the_end(app, db, slow_peer):
    endpoint = slow_peer(*TRICKLE_HTTP)
    database = db([Student(1001, fer=16)])
    url = f"http://127.0.0.1:{endpoint.port}/ping/abc"
    result = app.run("--sqlite", str(database), "--no-upload", "--timeout", "2", "--ping-url", url)
    assert result.returncode == 0 and 4 <= result.seconds < 4 + 4, result
    assert result.log.count("the monitoring ping to 127.0.0.1 did not finish within 2 seconds") == 2
    assert "abc" not in result.everything()  # the path is the check's credential


def test_a_silent_database_is_cut_at_the_deadline(app, slow_peer):
    listener = slow_peer()
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": f"127.0.0.1:{listener.port}/PSPRODDB"}
    result = app.run("--no-upload", "--timeout", "2", env=env)
    line = one_line(result.stderr)
    assert result.returncode == 3 and result.seconds < 2 + 4, result
    assert "the connection to database 127.0.0.1" in line and "did not finish within 2 seconds" in line
    assert SECRET_DB_PASSWORD not in result.everything()


def test_a_query_that_outlives_the_deadline_is_cancelled_on_the_database(app, db):
    database = db([Student(1001 + i, fer=16) for i in range(5)])
    (app.root / "slow.toml").write_text(SLOW_QUERY_PROFILE)
    result = app.run("--sqlite", str(database), "--config", "slow.toml", "--no-upload", "--timeout", "2")
    assert result.returncode == 3 and result.seconds < 2 + 4, result
    assert "the export query did not finish within 2 seconds" in one_line(result.stderr)


def test_a_trickling_sftp_server_is_cut_at_the_deadline_on_every_attempt(app, db, slow_peer):
    server = slow_peer(*TRICKLE_SSH)
    database = db([Student(1001, fer=16)])
    args = ("--sqlite", str(database), "--timeout", "2", "--retries", "2", "--retry-wait", "0.1")
    result = app.run(*args, env=sftp_env(app, server.port))
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 4 and result.seconds < 2 * 2 + 4, result
    assert "the SFTP login on 127.0.0.1" in line and "did not finish within 2 seconds" in line
    assert "gave up after 2 attempts" in line


def test_check_names_the_deadline_of_a_trickling_sftp_server(app, db, slow_peer):
    server = slow_peer(*TRICKLE_SSH)
    result = app.run("--check", "--sqlite", str(db([Student(1001)])), "--timeout", "2",
                     env=sftp_env(app, server.port))  # fmt: skip
    assert result.returncode == 4 and result.seconds < 2 + 4, result
    assert "[FAIL] SFTP login: the SFTP login on 127.0.0.1" in result.stdout
    assert "did not finish within 2 seconds" in result.stdout


# --- A stop ends any run within STOP_SECONDS ------------------------------------------


def run_and_stop(app: App, args, env, ready, signum=signal.SIGTERM, after: float = 0.0):
    """Start a run, wait until ready() says it is waiting where the test wants it, stop it;
    return (exit code, stderr, seconds from the signal to the exit)."""
    process = app.start(*args, env=env)
    try:
        deadline = time.monotonic() + 20
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()[1]
        assert ready(), "the run never reached the phase"
        time.sleep(after)
        stopped = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=ce.STOP_SECONDS + 10)
        return process.returncode, stderr, time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def assert_stopped(code: int, stderr: str, seconds: float, signum: int) -> None:
    assert code == (143 if signum == signal.SIGTERM else 130), stderr
    assert seconds < ce.STOP_SECONDS, seconds
    (line,) = stderr.strip().splitlines()
    assert ("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted (Ctrl-C)") in line
    assert not any(word in line for word in BLAME), line


SIGNALS = pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])


# A run waiting on one slow peer: what it is asked to do, the peer, and the settings that name it.
WAITS = {
    "database connect": (["--no-upload"], (), lambda app, port: {
        **ORACLE_ENV, "POWERSCHOOL_PROD_DB": f"127.0.0.1:{port}/PSPRODDB"}),
    "--notify-test": (["--notify-test"], TRICKLE_SMTP, lambda app, port: {"CLEVER_NOTIFY": smtp_target(port)}),
    "--show-host-key": (["--show-host-key"], TRICKLE_SSH, lambda app, port: {
        "D118_SFTP_ADDRESS": "127.0.0.1", "D118_SFTP_PORT": str(port)}),
}  # fmt: skip


@posix_signals
@SIGNALS
@pytest.mark.parametrize("waiting_on", list(WAITS))
def test_a_stop_while_waiting_on_a_slow_peer(app, slow_peer, signum, waiting_on):
    args, peer_kind, env_of = WAITS[waiting_on]
    peer = slow_peer(*peer_kind)
    code, stderr, seconds = run_and_stop(app, [*args, "--timeout", "60"], env_of(app, peer.port),
                                         peer.accepted.is_set, signum)  # fmt: skip
    assert_stopped(code, stderr, seconds, signum)


@posix_signals
@SIGNALS
def test_a_stop_during_a_long_query_cancels_it(app, db, signum):
    database = db([Student(1001 + i, fer=16) for i in range(5)])
    (app.root / "slow.toml").write_text(SLOW_QUERY_PROFILE)
    args = ["--sqlite", str(database), "--config", "slow.toml", "--timeout", "600"]
    code, stderr, seconds = run_and_stop(
        app, args, sftp_env(app, 2), lambda: "export started" in app.log(), signum, after=0.5
    )
    assert_stopped(code, stderr, seconds, signum)
    assert seconds < ce.STOP_GRACE_SECONDS + 2  # interrupted on the database, not waited for
    last_run = state_of(app)["last_run"]
    assert last_run["exit_code"] == code and "nothing was uploaded" in last_run["message"]


@posix_signals
@SIGNALS
@pytest.mark.parametrize("peer", [(), TRICKLE_SSH], ids=["silent", "trickling"])
def test_a_stop_during_the_sftp_login_of_a_night(app, db, slow_peer, signum, peer):
    server = slow_peer(*peer)
    args = ["--sqlite", str(db([Student(1001, fer=16)])), "--timeout", "60"]
    code, stderr, seconds = run_and_stop(
        app, args, sftp_env(app, server.port), server.accepted.is_set, signum
    )
    assert_stopped(code, stderr, seconds, signum)
    assert state_of(app)["last_run"]["exit_code"] == code
    status = app.run("--status")
    assert f"exit {code}" in status.stdout and "nothing was uploaded after the stop" in status.stdout


@posix_signals
@SIGNALS
def test_a_stop_during_the_start_ping(app, db, slow_peer, signum):
    endpoint = slow_peer(*TRICKLE_HTTP)
    args = ["--sqlite", str(db([Student(1001, fer=16)])), "--no-upload", "--timeout", "60",
            "--ping-url", f"http://127.0.0.1:{endpoint.port}/ping/abc"]  # fmt: skip
    code, stderr, seconds = run_and_stop(app, args, {}, endpoint.accepted.is_set, signum)
    assert_stopped(code, stderr, seconds, signum)
    assert not app.output.exists()  # nothing was started after the stop


@posix_signals
@SIGNALS
def test_a_stop_during_a_failed_nights_alert_keeps_the_recorded_failure(app, slow_peer, signum):
    relay = slow_peer(*TRICKLE_SMTP)
    env = failing_night_env(app, relay)
    args = ["--sqlite", "missing.sqlite", "--timeout", "60", "--quiet"]
    code, stderr, seconds = run_and_stop(app, args, env, relay.accepted.is_set, signum)
    # The night had failed (and recorded it) before the alert: the stop only ends the alert.
    assert code == 2 and seconds < ce.STOP_SECONDS, (code, seconds)
    assert len(stderr.strip().splitlines()) == 1 and "SQLite file" in stderr
    assert state_of(app)["last_run"]["exit_code"] == 2


@posix_signals
@SIGNALS
def test_a_stop_during_checks_database_phase_starts_no_other_check(app, slow_peer, signum):
    database, sftp = slow_peer(), slow_peer()
    env = {
        **ORACLE_ENV,
        "POWERSCHOOL_PROD_DB": f"127.0.0.1:{database.port}/PSPRODDB",
        **sftp_env(app, sftp.port),
    }
    process_args = ["--check", "--timeout", "60"]
    code, stderr, seconds = run_and_stop(app, process_args, env, database.accepted.is_set, signum)
    assert_stopped(code, stderr, seconds, signum)
    assert not sftp.accepted.is_set()  # never logged in, never wrote a probe


@posix_signals
@SIGNALS
def test_a_stop_during_checks_sftp_login_is_no_fail(app, db, slow_peer, signum):
    sftp = slow_peer()
    args = ["--check", "--sqlite", str(db([Student(1001)])), "--timeout", "60"]
    process = app.start(*args, env=sftp_env(app, sftp.port))
    try:
        assert sftp.accepted.wait(20)
        stopped = time.monotonic()
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=ce.STOP_SECONDS + 10)
    finally:
        if process.poll() is None:
            process.kill()
    assert_stopped(process.returncode, stderr, time.monotonic() - stopped, signum)
    assert "[FAIL]" not in stdout and "all checks passed" not in stdout


@posix_signals
def test_a_second_signal_changes_nothing(app, slow_peer):
    listener = slow_peer()
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": f"127.0.0.1:{listener.port}/PSPRODDB"}
    process = app.start("--no-upload", "--timeout", "60", env=env)
    try:
        assert listener.accepted.wait(20)
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=ce.STOP_SECONDS + 10)
    finally:
        if process.poll() is None:
            process.kill()
    assert_stopped(process.returncode, stderr, time.monotonic() - stopped, signal.SIGTERM)


@posix_signals
def test_forty_random_stops_of_a_night_where_every_service_is_slow(tmp_path, db, slow_peer):
    """Each night: a trickling start ping, then an SFTP server that trickles on every
    attempt, then alerts to a trickling relay and a trickling /fail ping.  Each run is
    stopped at a random moment before the night would have failed by itself."""
    endpoint, relay, sftp = slow_peer(*TRICKLE_HTTP), slow_peer(*TRICKLE_SMTP), slow_peer(*TRICKLE_SSH)
    database = db([Student(1001 + i, fer=16) for i in range(200)])
    chooser = random.Random(20261207)
    outcomes: list[tuple[App, int, int, str, float]] = []

    def night(app: App, signum: int, delay: float) -> None:
        env = {**sftp_env(app, sftp.port), "CLEVER_NOTIFY": smtp_target(relay.port)}
        # Alone, the night fails after ~7 s: a 1 s start ping, then 6 SFTP attempts of 1 s.
        args = ["--sqlite", str(database), "--quiet", "--timeout", "1", "--retries", "6", "--retry-wait", "0.05",
                "--ping-url", f"http://127.0.0.1:{endpoint.port}/p/x"]  # fmt: skip
        code, stderr, seconds = run_and_stop(app, args, env, app.log_path.exists, signum, after=delay)
        outcomes.append((app, signum, code, stderr, seconds))

    started = time.monotonic()
    for batch in range(4):
        nights = [
            threading.Thread(target=night, args=(App(tmp_path / f"night{batch}-{number}", process=True),
                             chooser.choice([signal.SIGTERM, signal.SIGINT]), chooser.uniform(0, 4.5)))
            for number in range(10)
        ]  # fmt: skip
        for thread in nights:
            thread.start()
        for thread in nights:
            thread.join(60)
    assert len(outcomes) == 40
    for app, signum, code, stderr, seconds in outcomes:
        assert_stopped(code, stderr, seconds, signum)
        status = app.run("--status")
        assert status.returncode == code and f"exit {code}" in status.stdout, status.stdout
    assert time.monotonic() - started < 120
