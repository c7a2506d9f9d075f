"""The scheduler examples (systemd, cron, Task Scheduler) and clever_export.env.example parse."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clever_export as ce

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "examples" / "systemd"
SERVICE = SYSTEMD / "clever-export.service"
TIMER = SYSTEMD / "clever-export.timer"
NOTIFY = SYSTEMD / "clever-export-notify@.service"
CRON = REPO / "examples" / "cron" / "clever-export"
POWERSHELL = REPO / "examples" / "windows" / "register-task.ps1"
ENV_EXAMPLE = REPO / "clever_export.env.example"

VARIABLES = (
    "POWERSCHOOL_READ_USER",
    "POWERSCHOOL_DB_PASSWORD",
    "POWERSCHOOL_PROD_DB",
    "D118_SFTP_ADDRESS",
    "D118_SFTP_PORT",
    "D118_SFTP_USERNAME",
    "D118_SFTP_PASSWORD",
    "D118_SFTP_KEY_FILE",
    "D118_SFTP_KEY_PASSPHRASE",
)
COMMENTED_OUT = ("ORACLE_CLIENT_LIB_DIR", "TNS_ADMIN")


def unit(path):
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return parser


def test_service_unit_runs_the_script_once_as_the_service_user():
    service = unit(SERVICE)
    assert set(service.sections()) == {"Unit", "Service"}
    section = service["Service"]
    assert section["Type"] == "oneshot"
    assert section["User"] == "clever-export"
    assert section["WorkingDirectory"] == "/opt/clever-export"
    assert section["ExecStart"].split()[:2] == [
        "/opt/clever-export/.venv/bin/python",
        "/opt/clever-export/clever_export.py",
    ]
    assert section["UMask"] == "0077"
    assert section["NoNewPrivileges"] == "yes"
    assert section["PrivateTmp"] == "yes"
    assert section["ProtectSystem"] == "strict"
    assert section["ReadWritePaths"] == "/opt/clever-export"
    assert "TimeoutStopSec" in section
    assert "EnvironmentFile" not in section  # the script reads clever_export.env itself
    assert re.search(r"^#\s*OnFailure=\S+", SERVICE.read_text(encoding="utf-8"), re.MULTILINE)


def test_timer_fires_nightly_and_catches_up_after_downtime():
    timer = unit(TIMER)
    section = timer["Timer"]
    assert section["OnCalendar"] == "*-*-* 01:30:00"
    assert section["Persistent"] == "true"
    assert "RandomizedDelaySec" in section
    assert section.get("Unit", SERVICE.name) == SERVICE.name
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_failure_hook_is_a_template_for_the_commented_on_failure_line():
    notify = unit(NOTIFY)
    assert notify["Service"]["Type"] == "oneshot"
    assert "%i" in notify["Service"]["ExecStart"]
    hook = re.search(r"^#\s*OnFailure=(\S+)@%n\.service$", SERVICE.read_text(encoding="utf-8"), re.MULTILINE)
    assert hook and f"{hook.group(1)}@.service" == NOTIFY.name


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    # The ExecStart program exists only on an installed server: point the copy at this Python.
    # The failure hook is switched on in the copy, and its template verified as the instance it would start.
    for source in (SERVICE, TIMER, NOTIFY):
        text = source.read_text(encoding="utf-8")
        if source == SERVICE:
            text = re.sub(
                r"^ExecStart=\S+ \S+", f"ExecStart={sys.executable} -c pass", text, count=1, flags=re.M
            )
            text = re.sub(r"^#\s*(OnFailure=)", r"\1", text, count=1, flags=re.M)
        (tmp_path / source.name).write_text(text, encoding="utf-8")
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            SERVICE.name,
            TIMER.name,
            f"{NOTIFY.stem}{SERVICE.name}.service",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys and unparsable values are only warnings ("..., ignoring."): none is allowed.
    assert not [line for line in output.splitlines() if str(tmp_path) in line or "clever-export" in line], (
        output
    )


def test_cron_line_runs_quietly_as_the_service_user_with_mail():
    lines = [
        line
        for line in CRON.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0].startswith("MAILTO=")
    minute, hour, day, month, weekday, user, *command = lines[1].split()
    assert (minute, hour, day, month, weekday) == ("30", "1", "*", "*", "*")
    assert user == "clever-export"
    assert command == [
        "timeout",
        "--kill-after=30s",
        "2h",
        "/opt/clever-export/.venv/bin/python",
        "/opt/clever-export/clever_export.py",
        "--quiet",
    ]
    assert "." not in CRON.name  # run-parts ignores /etc/cron.d files with dots in their names
    assert CRON.read_text(encoding="utf-8").endswith("\n")  # cron ignores an unterminated last line


def test_powershell_registers_a_time_limited_task_that_runs_logged_off():
    text = POWERSHELL.read_text(encoding="utf-8")
    for needed in (
        "New-ScheduledTaskAction",
        "New-ScheduledTaskTrigger -Daily -At 1:30am",
        "-ExecutionTimeLimit (New-TimeSpan -Hours 2)",
        "Register-ScheduledTask",
        "-User ",
        "-Password ",
        "--quiet",
    ):
        assert needed in text, needed
    # Balanced block comment and braces, and no cmd.exe line continuations.
    assert text.count("<#") == text.count("#>") == 1
    assert text.count("{") == text.count("}")
    assert not [line for line in text.splitlines() if line.rstrip().endswith("^")]


def longest_night(timeout: float, retries: int, wait: float) -> float:
    """docs/running.md's arithmetic: the start ping, every upload attempt and the waits
    between them, then the alerts and the fail ping (together)."""
    return timeout + retries * timeout + sum(wait * 2**n for n in range(retries - 1)) + timeout


def seconds_of(text: str) -> float:
    """A systemd or coreutils time span: 30s, 2h, 5min."""
    number, unit = re.fullmatch(r"([0-9.]+)(s|min|m|h)?", text).groups()
    return float(number) * {"s": 1, None: 1, "min": 60, "m": 60, "h": 3600}[unit]


def test_every_schedulers_limit_leaves_room_for_the_longest_night_and_the_stop():
    night = longest_night(ce.DEFAULT_TIMEOUT_SECONDS, ce.DEFAULT_RETRIES, ce.DEFAULT_RETRY_WAIT_SECONDS)
    running = (REPO / "docs" / "running.md").read_text(encoding="utf-8")
    assert night == 330 and "= 60 + 3 × 60 + (10 + 20) + 60 = 330 s with the defaults" in running
    assert f"stop          = {ce.STOP_SECONDS:g} s after the signal" in running
    service = unit(SERVICE)["Service"]
    assert seconds_of(service["TimeoutStartSec"]) >= 10 * night
    assert seconds_of(service["TimeoutStopSec"]) >= ce.STOP_SECONDS + 10  # SIGKILL never beats the record
    cron = re.search(r"timeout --kill-after=(\S+) (\S+) ", CRON.read_text(encoding="utf-8"))
    assert seconds_of(cron[2]) >= 10 * night and seconds_of(cron[1]) >= ce.STOP_SECONDS + 10
    task = re.search(
        r"-ExecutionTimeLimit \(New-TimeSpan -Hours ([0-9]+)\)", POWERSHELL.read_text(encoding="utf-8")
    )
    assert int(task[1]) * 3600 >= 10 * night  # Task Scheduler terminates: no stop to wait for


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="PowerShell (pwsh) is not installed")
def test_powershell_script_parses():
    command = (
        "$errors = $null; "
        f"[System.Management.Automation.Language.Parser]::ParseFile('{POWERSHELL}', [ref]$null, [ref]$errors) | Out-Null; "
        "if ($errors) { $errors | ForEach-Object { $_.ToString() }; exit 1 }"
    )
    result = subprocess.run(
        ["pwsh", "-NoProfile", "-NonInteractive", "-Command", command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_env_example_names_every_variable_with_placeholders():
    dotenv = pytest.importorskip("dotenv")
    values = dotenv.dotenv_values(ENV_EXAMPLE, interpolate=False)
    text = ENV_EXAMPLE.read_text(encoding="utf-8")
    for name in VARIABLES:
        assert name in values or re.search(rf"^#{name}=", text, re.MULTILINE), name
    for name in COMMENTED_OUT:
        assert name not in values, name
        assert re.search(rf"^#{name}=", text, re.MULTILINE), name
    required = {"POWERSCHOOL_READ_USER", "POWERSCHOOL_DB_PASSWORD", "POWERSCHOOL_PROD_DB"}
    required |= {"D118_SFTP_ADDRESS", "D118_SFTP_USERNAME"}
    assert required <= {name for name, value in values.items() if value}
    assert values["D118_SFTP_PASSWORD"] or "D118_SFTP_KEY_FILE" in values  # one way to log in
    # The quoting example: "$" and "#" survive inside single quotes, with no ${...} expansion.
    password = values["POWERSCHOOL_DB_PASSWORD"]
    assert "$" in password and "#" in password
    assert f"POWERSCHOOL_DB_PASSWORD='{password}'" in text
    # Placeholders only: example.org hosts, nothing that looks like a real district's server.
    assert values["POWERSCHOOL_PROD_DB"].split(":")[0].endswith("example.org")
    assert values["D118_SFTP_ADDRESS"].endswith("example.org")


def test_env_example_uncommented_variables_are_those_the_script_reads():
    dotenv = pytest.importorskip("dotenv")
    values = dotenv.dotenv_values(ENV_EXAMPLE, interpolate=False)
    assert set(values) <= set(VARIABLES)


def test_the_real_env_file_is_git_ignored_but_the_example_is_not():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")

    def ignored(name):
        return subprocess.run(["git", "check-ignore", "-q", name], cwd=REPO, timeout=60).returncode == 0

    assert ignored("clever_export.env")
    assert not ignored("clever_export.env.example")
