"""Alerts that need no mail server on the box: Apprise notifications to a real
SMTP server (STARTTLS, login) and to an HTTP receiver (json://) on loopback.
They carry run-level lines only: never a student's number, name or values, a
password or a target's URL."""

import email
import email.policy
import json
import re

import pytest
from conftest import SECRET_SFTP_PASSWORD, SMTP_PASSWORD, Student

STUDENT_DETAIL = re.compile(r"\b1001\d?\b|Pat|Doe|\t")


@pytest.fixture
def alert_app(uploading_app, db):
    app = uploading_app
    app.db_path = db([Student(10010 + i, first="Pat", last="Doe", fer=16) for i in range(10)])
    app.base_args = ("--sqlite", str(app.db_path), "--timeout", "5", "--retry-wait", "0.05")
    return app


def json_target(ping_server) -> str:
    return ping_server.url.replace("http://", "json://")


def bodies(ping_server) -> list[str]:
    return [json.loads(body)["message"] for _, body in ping_server.pings]


def assert_run_level_only(text: str) -> None:
    assert not STUDENT_DETAIL.search(text), text
    for secret in (SECRET_SFTP_PASSWORD, SMTP_PASSWORD):
        assert secret not in text


def test_a_failed_night_is_mailed_over_starttls_with_run_level_lines_only(
    alert_app, smtp_server, sftp_server
):
    env = {"CLEVER_NOTIFY": smtp_server.url, "D118_SFTP_PASSWORD": "wrong-password"}
    result = alert_app.run(*alert_app.base_args, "--retries", "1", env=env)
    assert result.returncode == 4, result.stderr
    (message,) = smtp_server.messages
    assert "clever_export FAILED" in message and "exit 4 (SFTP: connect, login, host key, upload)" in message
    assert "SFTP login as" in message
    assert_run_level_only(message)
    assert_run_level_only(result.stderr + result.log.replace(str(alert_app.db_path), ""))


def test_a_failure_reaches_a_json_receiver(alert_app, ping_server, sftp_server):
    env = {"CLEVER_NOTIFY": json_target(ping_server), "D118_SFTP_PASSWORD": "wrong-password"}
    result = alert_app.run(*alert_app.base_args, "--retries", "1", env=env)
    assert result.returncode == 4
    (body,) = bodies(ping_server)
    assert "exit 4" in body and "SFTP login as" in body
    assert_run_level_only(body)


def test_success_notifies_only_when_asked(alert_app, ping_server, sftp_server):
    env = {"CLEVER_NOTIFY": json_target(ping_server)}
    assert alert_app.run(*alert_app.base_args, env=env).returncode == 0
    assert ping_server.pings == []
    assert alert_app.run(*alert_app.base_args, "--notify-success", env=env).returncode == 0
    (body,) = bodies(ping_server)
    assert "succeeded" in body and "exit 0" in body
    assert_run_level_only(body)


def test_a_run_turned_away_by_the_lock_does_not_alert(alert_app, ping_server, sftp_server):
    import filelock

    env = {"CLEVER_NOTIFY": json_target(ping_server)}
    with filelock.FileLock(str(alert_app.root / "clever_export.lock"), timeout=0):
        result = alert_app.run(*alert_app.base_args, env=env)
    assert result.returncode == 75 and ping_server.pings == []


def test_a_failed_notification_warns_and_keeps_the_exit_code(alert_app, sftp_server):
    env = {"CLEVER_NOTIFY": "json://127.0.0.1:1/nowhere", "D118_SFTP_PASSWORD": "wrong-password"}
    result = alert_app.run(*alert_app.base_args, "--retries", "1", env=env)
    assert result.returncode == 4
    assert len(result.stderr.strip().splitlines()) == 1  # the failure's one line, nothing after it
    assert "WARNING notification to json://127.0.0.1:1 failed" in result.log
    assert "Traceback" not in result.stderr + result.log


def test_notify_test_sends_and_check_shows_scheme_and_host_only(alert_app, smtp_server):
    env = {"CLEVER_NOTIFY": smtp_server.url}
    result = alert_app.run("--notify-test", env=env)
    assert result.returncode == 0, result.stderr
    (message,) = smtp_server.messages
    assert "clever_export test" in message
    check = alert_app.run("--check", *alert_app.base_args, env=env)
    assert f"notifications: mailtos://127.0.0.1:{smtp_server.port}" in check.stdout
    assert SMTP_PASSWORD not in check.stdout + check.stderr + alert_app.log()
    assert "alerts" not in check.stdout  # the login name is part of the URL's credentials


def test_notify_test_without_targets_or_with_a_dead_one_exits_2(alert_app):
    assert "CLEVER_NOTIFY is not set" in alert_app.run("--notify-test").stderr
    result = alert_app.run("--notify-test", env={"CLEVER_NOTIFY": "json://127.0.0.1:1/x"})
    assert result.returncode == 2 and "the test notification to json://127.0.0.1:1 failed" in result.stderr


def test_apprise_is_imported_only_to_send(alert_app):
    import subprocess
    import sys

    code = (
        "import sys; sys.argv = ['clever_export.py', '--demo', '--quiet']; import runpy\n"
        "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print('apprise' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=alert_app.root, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mailtos://user:pw@smtp.example.org:587?from=a@b&to=c@d", "mailtos://smtp.example.org:587"),
        ("https://[abc/x", "https://?"),
        ("no-scheme-at-all", "a URL without ://"),
        ("pbul://o.gn5kj6nfhv736I7jC3cj3QLRiyhgl98b", "pbul://…"),  # the "host" is the token
        ("mailtos://user:1234/SecretTail@smtp.example.org", "mailtos://…"),  # an unencoded "/" in a password
        ("json://host:abc/x", "json://?"),
        ("mailtos://clever-alerts:2024?x@smtp.example.org", "mailtos://…"),  # an unencoded "?" in a password
        ("mailtos://clever-alerts:20#24@smtp.example.org", "mailtos://…"),  # an unencoded "#"
        ("ntfys://clever-alerts-topic-8f2k", "ntfys://…"),  # the topic is the only secret
        ("ntfys://ntfy.district.org/topic", "ntfys://…"),
        ("mailtos://_?user=alerts@district.org&pass=pw&smtp=smtp.office365.com", "mailtos://_"),
        ("mailtos://alerts:p@ss#word@smtp.district.org", "mailtos://…"),  # an unencoded "@" and "#"
        ("mailto://me:a@b/c@host", "mailtos://…".replace("mailtos", "mailto")),
    ],
)
def test_a_target_is_shown_by_scheme_and_host_only(url, shown):
    from conftest import clever_export as ce

    assert ce.target_shown(url) == shown


def test_each_line_of_an_alert_mail_stays_a_line_in_every_part(alert_app, smtp_server, sftp_server):
    env = {"CLEVER_NOTIFY": smtp_server.url, "D118_SFTP_PASSWORD": "wrong-password"}
    assert alert_app.run(*alert_app.base_args, "--retries", "1", env=env).returncode == 4
    (message,) = smtp_server.messages
    parts = [
        part.get_content()
        for part in email.message_from_string(message, policy=email.policy.default).walk()
        if part.get_content_maintype() == "text"
    ]
    assert parts
    for text in parts:
        lines = [line for line in text.replace("<br />", "\n").replace("<br/>", "\n").splitlines() if line]
        assert lines[0].endswith("exit 4 (SFTP: connect, login, host key, upload)"), lines
        assert lines[1].startswith("SFTP login as clever"), lines
