"""Where districts put the script: Task Scheduler starts jobs in
C:\\Windows\\System32, installs live under folders with spaces and non-ASCII
letters, and key files get names with spaces.  The output is the same bytes
whatever the platform."""

import os
import shutil
import sys
from pathlib import Path

from conftest import REPO, SECRET_KEY_PASSPHRASE, Student, make_db

EXPECTED = b"1001\tN\tW\tN\n1002\tY\tB\tY\n"


def deploy(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copy2(REPO / "clever_export.py", root / "clever_export.py")
    shutil.copytree(REPO / "demo", root / "demo")
    return root / "clever_export.py"


def starting_folder() -> str:
    """Where a scheduler starts the job: System32 on Windows, / under cron and systemd."""
    if os.name == "nt":
        return os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "System32")
    return "/"


def test_a_scheduled_start_from_system32_writes_beside_the_script(tmp_path, sftp_server):
    import subprocess

    script = deploy(tmp_path / "Program Files" / "Clever Export Ünïcode")
    make_db(
        script.parent / "power school.sqlite", [Student(1001), Student(1002, fedethnicity=1, fer=14, lep=1)]
    )
    key = script.parent / "client key"
    shutil.copy2(sftp_server.key_file, key)
    (script.parent / "known_hosts").write_text(sftp_server.known_hosts_line())
    env = {**os.environ, **sftp_server.env(), "PYTHONIOENCODING": "utf-8"}
    env.pop("D118_SFTP_PASSWORD", None)
    env["D118_SFTP_KEY_FILE"] = "client key"  # relative: beside the script, never the working folder
    env["D118_SFTP_KEY_PASSPHRASE"] = SECRET_KEY_PASSPHRASE
    done = subprocess.run(
        [sys.executable, str(script), "--sqlite", "power school.sqlite", "--timeout", "10"],
        cwd=starting_folder(), env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (script.parent / "raceethnicity.txt").read_bytes() == EXPECTED  # LF, UTF-8, same bytes
    assert sftp_server.remote().read_bytes() == EXPECTED
    assert (script.parent / "clever_export.log").exists()
    assert not Path(starting_folder(), "raceethnicity.txt").exists()
