"""Installing and running unattended: the env file, --status, --demo-db, and
README's Debian/Ubuntu install block followed as written in a temporary folder.

(That every example file parses is tests/test_examples_schedulers.py.)
"""

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SECRET_SFTP_PASSWORD, Student, one_line, posix_modes

# an admin's path: the deployed file, run as the scheduled task runs it
pytestmark = pytest.mark.own_process

ENV_FILE_NAME = "clever_export.env"
STATE_FILE_NAME = "clever_export.state.json"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # the state file's "at", as now_text() writes it


# --- Helpers -------------------------------------------------------------------


def write_env_file(path: Path, values: dict[str, str], mode: int = 0o600, quote: str = "'") -> Path:
    """KEY=value lines, each value in `quote`, as an admin writes clever_export.env."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(f"{key}={quote}{value}{quote}\n" for key, value in values.items()), encoding="utf-8"
    )
    path.chmod(mode)
    return path


def move_sftp_settings_to_file(app, path: Path | None = None, quote: str = "'", **overrides: str) -> Path:
    """Take the D118_SFTP_* variables out of the job's environment and put them in an env file."""
    values = {key: value for key, value in app.env.items() if key.startswith("D118_SFTP_")}
    app.env = {key: value for key, value in app.env.items() if key not in values}
    return write_env_file(path or app.root / ENV_FILE_NAME, {**values, **overrides}, quote=quote)


def uploaded(app, server) -> bool:
    return server.remote().exists() and server.remote().read_bytes() == app.output.read_bytes()


DISTINCT_NUMBERS = [987001 + i for i in range(10)]


def distinct_args(db) -> tuple[str, ...]:
    """uploading_app's arguments with students whose numbers no other text contains."""
    path = db([Student(number, first="Zebulon", last="Quarrington", fer=16) for number in DISTINCT_NUMBERS])
    return ("--sqlite", str(path), "--timeout", "5", "--retry-wait", "0.05")


def state_file(app) -> Path:
    return app.root / STATE_FILE_NAME


def status_line(stdout: str, start: str) -> str:
    """The one --status line that starts with `start` ("last run: ", "last upload: ")."""
    found = [line for line in stdout.splitlines() if line.startswith(start)]
    assert len(found) == 1, stdout
    return found[0]


# --- The env file beside the script ------------------------------------------------


def test_env_file_beside_the_script_is_read_by_default(uploading_app, sftp_server):
    move_sftp_settings_to_file(uploading_app)
    # Started from another folder, as Task Scheduler starts jobs in System32.
    result = uploading_app.run(*uploading_app.base_args, cwd=sftp_server.workdir)
    assert result.returncode == 0, result.stderr
    assert uploaded(uploading_app, sftp_server)
    assert SECRET_SFTP_PASSWORD not in result.everything()


def test_without_the_env_file_the_sftp_settings_are_missing(uploading_app, sftp_server):
    """The converse of the test above: the settings really came from the file."""
    move_sftp_settings_to_file(uploading_app).unlink()
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 2
    assert "D118_SFTP_ADDRESS" in one_line(result.stderr)
    assert not sftp_server.remote().exists()


def test_env_file_flag_names_another_file_resolved_beside_the_script(uploading_app, sftp_server):
    settings = uploading_app.root / "settings" / "night.env"
    move_sftp_settings_to_file(uploading_app, settings)
    # The default file holds a wrong password: --env-file replaces it, it does not add to it.
    write_env_file(uploading_app.root / ENV_FILE_NAME, {"D118_SFTP_PASSWORD": "not-the-password"})
    result = uploading_app.run(
        *uploading_app.base_args, "--env-file", "settings/night.env", cwd=sftp_server.workdir
    )
    assert result.returncode == 0, result.stderr
    assert uploaded(uploading_app, sftp_server)


def test_process_environment_wins_over_the_env_file(uploading_app, sftp_server):
    move_sftp_settings_to_file(uploading_app, D118_SFTP_PASSWORD="wrong-password-in-the-file")
    uploading_app.env["D118_SFTP_PASSWORD"] = sftp_server.password
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert uploaded(uploading_app, sftp_server)


def test_the_env_files_password_is_used_when_the_environment_has_none(uploading_app, sftp_server):
    """The converse: the file's value is the one that reached the server above, had the env not won."""
    move_sftp_settings_to_file(uploading_app, D118_SFTP_PASSWORD="wrong-password-in-the-file")
    result = uploading_app.run(*uploading_app.base_args, "--retries", "1")
    assert result.returncode == 4
    assert not sftp_server.remote().exists()


# `$HOME` is what a shell would expand, `${HOME}` what dotenv's interpolation would.
DOLLAR_PASSWORD = "pa$$word$HOME${HOME}"


@pytest.mark.parametrize("quote", ["'", '"', ""], ids=["single-quoted", "double-quoted", "unquoted"])
def test_dollar_in_a_value_is_read_literally(uploading_app, sftp_server, quote):
    sftp_server.password = DOLLAR_PASSWORD
    move_sftp_settings_to_file(uploading_app, quote=quote, D118_SFTP_PASSWORD=DOLLAR_PASSWORD)
    result = uploading_app.run(*uploading_app.base_args, "--retries", "1", env={"HOME": "/home/someone"})
    assert result.returncode == 0, result.stderr
    assert uploaded(uploading_app, sftp_server)
    assert DOLLAR_PASSWORD not in result.everything()


@posix_modes
def test_env_file_readable_by_others_is_refused(uploading_app, sftp_server):
    path = move_sftp_settings_to_file(uploading_app)
    path.chmod(0o644)
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "chmod 600" in line and str(path) in line
    assert not sftp_server.remote().exists()
    assert not uploading_app.output.exists()  # refused before the database is read
    assert SECRET_SFTP_PASSWORD not in result.everything()


def test_missing_named_env_file_exits_2(uploading_app, sftp_server):
    result = uploading_app.run(*uploading_app.base_args, "--env-file", "nope.env")
    assert result.returncode == 2
    assert str(uploading_app.root / "nope.env") in one_line(result.stderr)
    assert not sftp_server.remote().exists()


def test_check_names_the_env_file_and_no_value(uploading_app, sftp_server):
    path = move_sftp_settings_to_file(uploading_app)
    result = uploading_app.run("--check", *uploading_app.base_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"settings: {path}" in result.stdout.splitlines()
    assert "all checks passed" in result.stdout
    assert SECRET_SFTP_PASSWORD not in result.everything()


def test_check_without_env_file_says_so(uploading_app):
    result = uploading_app.run("--check", *uploading_app.base_args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "settings: the process environment (no env file)" in result.stdout.splitlines()
    assert SECRET_SFTP_PASSWORD not in result.everything()


# --- --status --------------------------------------------------------------------


def test_status_with_no_run_recorded_exits_2(app):
    result = app.run("--status")
    assert result.returncode == 2
    assert "last run: none recorded" in result.stdout
    assert "last upload: none recorded" in result.stdout


def test_status_after_a_success_then_a_failure(uploading_app, sftp_server, db):
    args = distinct_args(db)
    first = uploading_app.run(*args)
    assert first.returncode == 0, first.stderr
    remote_path = f"127.0.0.1:{sftp_server.remote_dir}raceethnicity.txt"

    status = uploading_app.run("--status")
    assert status.returncode == 0, status.stdout
    assert "exit 0" in status_line(status.stdout, "last run: ")
    last_upload = status_line(status.stdout, "last upload: ")
    assert f"{len(DISTINCT_NUMBERS)} students" in last_upload and remote_path in last_upload

    failed = uploading_app.run(*args, "--retries", "1", env={"D118_SFTP_PASSWORD": "wrong-password"})
    assert failed.returncode == 4
    failure = one_line(failed.stderr).removeprefix("ERROR: ")

    status = uploading_app.run("--status")
    assert status.returncode == 4, status.stdout
    assert "exit 4" in status_line(status.stdout, "last run: ")
    assert failure in status.stdout
    # The last successful upload is still shown, unchanged.
    assert status_line(status.stdout, "last upload: ") == last_upload

    state_text = state_file(uploading_app).read_text(encoding="utf-8")
    for number in DISTINCT_NUMBERS:
        assert str(number) not in state_text
    assert "Zebulon" not in state_text and "Quarrington" not in state_text
    assert "wrong-password" not in state_text


def test_status_max_age(uploading_app, sftp_server):
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    fresh = uploading_app.run("--status", "--max-age", "1")
    assert fresh.returncode == 0, fresh.stdout

    path = state_file(uploading_app)
    state = json.loads(path.read_text(encoding="utf-8"))
    state["last_upload"]["at"] = time.strftime(TIME_FORMAT, time.localtime(time.time() - 48 * 3600))
    path.write_text(json.dumps(state), encoding="utf-8")
    stale = uploading_app.run("--status", "--max-age", "24")
    assert stale.returncode == 7, stale.stdout
    assert "--max-age is 24 hours" in stale.stdout
    assert uploading_app.run("--status", "--max-age", "50").returncode == 0


@pytest.mark.parametrize(
    ("hours_ago", "reader_tz", "max_age", "expected"),
    [(0, "JST-9", "1", 0), (30, "AKST9", "24", 7)],  # POSIX TZ: JST-9 is UTC+9, AKST9 is UTC-9
    ids=["fresh-upload-looks-9-hours-old", "30-hour-old-upload-looks-21-hours-old"],
)
def test_status_max_age_honours_the_recorded_utc_offset(
    uploading_app, hours_ago, reader_tz, max_age, expected
):
    writer = {"TZ": "UTC0"}
    assert uploading_app.run(*uploading_app.base_args, env=writer).returncode == 0
    path = state_file(uploading_app)
    state = json.loads(path.read_text(encoding="utf-8"))
    assert state["last_upload"]["at"].endswith("+0000")
    state["last_upload"]["at"] = time.strftime(
        TIME_FORMAT[:-2] + "+0000", time.gmtime(time.time() - hours_ago * 3600)
    )
    path.write_text(json.dumps(state), encoding="utf-8")
    assert uploading_app.run("--status", "--max-age", max_age, env=writer).returncode == expected
    assert uploading_app.run("--status", "--max-age", max_age, env={"TZ": reader_tz}).returncode == expected


@posix_modes
def test_status_reports_a_run_refused_for_its_env_file(uploading_app, sftp_server):
    path = move_sftp_settings_to_file(uploading_app)
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    path.chmod(0o644)  # e.g. an editor that rewrote the file with the default umask
    assert uploading_app.run(*uploading_app.base_args).returncode == 2
    status = uploading_app.run("--status")
    assert "exit 2" in status_line(status.stdout, "last run: ")
    assert status.returncode == 2


# --- --demo-db ---------------------------------------------------------------------


def test_demo_db_then_sqlite_writes_what_demo_writes(app, tmp_path):
    made = app.run("--demo-db", "ps.db", cwd=tmp_path)  # relative: beside the script
    assert made.returncode == 0, made.stderr
    demo_db = app.root / "ps.db"
    assert demo_db.read_bytes().startswith(b"SQLite format 3\x00")
    assert not (tmp_path / "ps.db").exists()

    exported = app.run("--sqlite", "ps.db", "--no-upload", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    demo = app.run("--demo", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert app.output.read_bytes() == (app.root / "demo-raceethnicity.txt").read_bytes()
    assert app.output.stat().st_size > 0

    before = demo_db.read_bytes()
    again = app.run("--demo-db", "ps.db")
    assert again.returncode == 2
    assert "already exists" in one_line(again.stderr)
    assert demo_db.read_bytes() == before


def test_demo_db_hint_on_an_ascii_console_escapes_the_path_it_cannot_show(app, tmp_path):
    target = tmp_path / "Ученики" / "ps.db"
    made = app.run("--demo-db", str(target), env={"PYTHONIOENCODING": "ascii"})
    assert made.returncode == 0, made.stderr
    assert "\\u0423" in made.stdout and target.exists()  # escaped, not a crash


def test_demo_db_is_owner_only_and_its_hint_pastes_with_spaces(app, tmp_path):
    import os
    import shlex
    import stat
    import subprocess

    target = tmp_path / "trial folder" / "power school.db"
    made = app.run("--demo-db", str(target))
    assert made.returncode == 0, made.stderr
    if os.name == "posix":
        assert stat.S_IMODE(target.stat().st_mode) == 0o600  # sample students, but student-shaped data
    hint = made.stdout.strip().partition("try: ")[2]
    words = shlex.split(hint) if os.name == "posix" else None
    if words is not None:  # the hint parses back into the same path, spaces and all
        assert words[words.index("--sqlite") + 1] == str(target)
    else:
        assert subprocess.list2cmdline(["--sqlite", str(target)]) in hint


# --- README's Debian/Ubuntu install block, followed as written -------------------

# What the test changes in README's commands, and why. Nothing else is changed:
# the venv is made and `pip install -r requirements.txt` runs as written.
#   (README text,                  run instead,        why)
# `None` skips the whole line that starts with the README text.
INSTALL_SUBSTITUTIONS: tuple[tuple[str, str | None, str], ...] = (
    ("sudo apt-get ",        None,        "installs python3-venv system-wide (root); this machine's python3 has venv"),
    ("sudo useradd ",        None,        "creates the service account (root); the test runs as the current user"),
    ("sudo chown -R clever-export:clever-export ", None, "gives the folder to that account; the current user owns it"),
    ("sudo -u clever-export ", "",        "run as the service account: here, as the current user"),
    ("sudo ",                "",          "root only to write under /opt: the test owns its temporary folder"),
    ("/opt/clever-export",   "{install}", "the install folder: a temporary folder instead"),
)  # fmt: skip
# README's way to run a command as the service account (First questions), with --demo.
DEMO_AS_SERVICE_ACCOUNT = (
    "sudo -u clever-export /opt/clever-export/.venv/bin/python /opt/clever-export/clever_export.py --demo"
)
PIP_SECONDS = 180
PIP_CONNECTION_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "Max retries exceeded",
)


def readme_debian_install_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Installing on the district's server\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end]
    after = section[section.index("**Debian / Ubuntu.**") :]
    block = re.search(r"```sh\n(.*?)```", after, re.DOTALL)
    assert block, "README's Debian / Ubuntu install block not found"
    lines = [line.strip() for line in block.group(1).splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert not [line for line in commands if line.endswith("\\")], (
        "continued lines: teach the test to join them"
    )
    return commands


def as_the_test_runs_it(command: str, install: Path, used: set[str]) -> str | None:
    """One README command with INSTALL_SUBSTITUTIONS applied; None if the table skips it."""
    for readme_text, instead, _why in INSTALL_SUBSTITUTIONS:
        if instead is None and command.startswith(readme_text):
            used.add(readme_text)
            return None
    for readme_text, instead, _why in INSTALL_SUBSTITUTIONS:
        if instead is not None and readme_text in command:
            used.add(readme_text)
            command = command.replace(readme_text, instead)
    assert "sudo" not in command and "/opt/clever-export" not in command, command
    return command.replace("{install}", shlex.quote(str(install)))


def copy_as_a_fresh_clone(target: Path) -> None:
    """What a clone would hold if the working tree were committed: tracked and
    untracked files, without what .gitignore keeps out (.venv, logs, state, clever_export.env)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed, so the files of a fresh clone cannot be listed")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, timeout=30,
    )  # fmt: skip
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: {listed.stderr.decode(errors='replace').strip()}")
    for name in sorted(set(filter(None, listed.stdout.decode("utf-8").split("\0")))):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree will not be in a clone
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def shell_environment() -> dict[str, str]:
    """This machine's environment (its pip index settings too), without the job's settings."""
    return {key: value for key, value in os.environ.items() if not key.startswith(("POWERSCHOOL_", "D118_"))}


@pytest.mark.skipif(sys.platform == "win32", reason="the Linux install block")
@pytest.mark.timeout(300)
def test_readme_debian_install_block_installs_a_working_copy(tmp_path):
    python3 = shutil.which("python3")
    if python3 is None:
        pytest.skip("no python3 on PATH (the README's install block runs python3)")
    version = subprocess.run(
        [python3, "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if version.stdout.strip() != "True":
        pytest.skip(f"{python3} is older than the Python 3.11 README requires")

    checkout, install = tmp_path / "checkout", tmp_path / "opt" / "clever-export"
    copy_as_a_fresh_clone(checkout)
    used: set[str] = set()
    for command in readme_debian_install_commands():
        runs = as_the_test_runs_it(command, install, used)
        if runs is None:
            continue
        is_pip = " -m pip install " in runs
        try:
            done = subprocess.run(
                ["sh", "-c", runs], cwd=checkout, env=shell_environment(), capture_output=True, text=True,
                timeout=PIP_SECONDS if is_pip else 60,
            )  # fmt: skip
        except subprocess.TimeoutExpired as timeout:
            if is_pip:
                pytest.skip(f"pip install did not finish in {PIP_SECONDS} s (no package index access?)")
            raise AssertionError(f"README command hung: {runs}") from timeout
        output = done.stdout + done.stderr
        if done.returncode != 0 and is_pip and any(error in output for error in PIP_CONNECTION_ERRORS):
            pytest.skip(f"pip cannot reach a package index: {output.strip().splitlines()[-1]}")
        assert done.returncode == 0, f"README command failed: {command}\nran: {runs}\n{output}"

    assert (install / ".venv" / "bin" / "python").exists()
    assert (install / ENV_FILE_NAME).stat().st_mode & 0o777 == 0o600
    assert install.stat().st_mode & 0o777 == 0o700

    demo = as_the_test_runs_it(DEMO_AS_SERVICE_ACCOUNT, install, used)
    done = subprocess.run(
        ["sh", "-c", demo], cwd=tmp_path, env=shell_environment(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    written = (install / "demo-raceethnicity.txt").read_text(encoding="utf-8")
    assert written and all(len(line.split("\t")) == 4 for line in written.splitlines())
    # Every substitution was needed: a README change that makes one stale fails here.
    assert used == {readme_text for readme_text, _, _ in INSTALL_SUBSTITUTIONS}


def test_an_env_file_saved_by_notepad_with_a_byte_order_mark_works(uploading_app, sftp_server):
    path = move_sftp_settings_to_file(uploading_app)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr


def test_an_env_file_line_that_is_not_key_value_is_named_in_one_line(uploading_app, sftp_server):
    path = move_sftp_settings_to_file(uploading_app)
    path.write_text(path.read_text() + "this is not a setting\n'unclosed\n")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(path) in line and "not KEY=value" in line


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-test.txt"])
def test_every_dependency_is_pinned_with_hashes_for_linux_and_windows(name):
    text = (REPO / name).read_text(encoding="utf-8")
    blocks = [block for block in re.split(r"\n(?=[A-Za-z])", text) if not block.startswith("#")]
    assert len(blocks) >= 20  # the transitive ones too
    for block in blocks:
        assert re.match(r"[A-Za-z0-9_.\[\]-]+==\S+", block) and "--hash=sha256:" in block, block
    pinned = {block.split("==")[0].split("[")[0].lower() for block in blocks}
    assert {"paramiko", "cryptography", "bcrypt", "pynacl", "oracledb", "apprise", "pywin32-ctypes"} <= pinned
    assert "sys_platform == 'win32'" in text  # the Windows-only pins keep their marker
    assert name.replace(".txt", ".in") in text.splitlines()[1]  # compiled from its .in file


@pytest.mark.timeout(200)
@pytest.mark.skipif(
    importlib.util.find_spec("pip") is None,
    reason="no pip in this Python (CI's Windows one installs from its wheel, checking the same hashes)",
)
def test_pip_refuses_a_download_whose_hash_is_not_the_locks(tmp_path):
    text = (REPO / "requirements.txt").read_text(encoding="utf-8")
    block = re.search(r"^filelock==\S+ \\\n(?:\s+--hash=sha256:[0-9a-f]+ ?\\?\n)+", text, re.MULTILINE)[0]
    (tmp_path / "good.txt").write_text(block)
    (tmp_path / "bad.txt").write_text(re.sub(r"sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, block))
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(tmp_path / "d"), "-r"]
    good = subprocess.run(
        [*command, str(tmp_path / "good.txt")], capture_output=True, text=True, timeout=PIP_SECONDS
    )
    if good.returncode != 0 and any(error in good.stderr for error in PIP_CONNECTION_ERRORS):
        pytest.skip("pip cannot reach a package index")
    assert good.returncode == 0, good.stderr
    bad = subprocess.run(
        [*command, str(tmp_path / "bad.txt")], capture_output=True, text=True, timeout=PIP_SECONDS
    )
    assert bad.returncode != 0 and "DO NOT MATCH THE HASHES" in bad.stderr


def test_demo_db_never_writes_the_env_files_name(app):
    result = app.run("--demo-db", "clever_export.env")
    assert result.returncode == 2 and "the env file's name" in result.stderr
    assert not (app.root / "clever_export.env").exists()
