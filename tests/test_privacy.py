"""Student data stays with the district: owner-only files here and there, no
write through a planted link, no student in stderr or a monitoring ping, a
redaction that reveals nothing, and no output aimed at the script's own files."""

import hashlib
import json
import os
import re
import stat
import subprocess

import asyncssh
import pytest
from conftest import (
    ORACLE_ENV,
    SECRET_DB_PASSWORD,
    Student,
    many_students,
    one_line,
    posix_modes,
    posix_paths,
    posix_symlinks,
    run_main,
)
from conftest import clever_export as ce

# stderr as cron mail shows it: the interpreter's own streams, not a capture of main()
pytestmark = pytest.mark.own_process

# Distinctive numbers and names: any of them on stderr, stdout or in a ping is a leak.
NAMES = ("Zebediah", "Quillfeather", "Ottoline", "Marchbanks", "Persephone", "Vantongeren",
         "Bartholomew", "Ironmonger", "Ignatius", "Thistlewood", "Clementine", "Dunwoody")  # fmt: skip
NUMBERS = ("987654", "987655", "987656", "X987657", "987659", "987660")


def privacy_students() -> list[Student]:
    """Students who reach every per-student log line: -v detail, a change, a
    neighbour duplicate, a non-numeric number, a scattered duplicate."""
    return [
        Student(987654, first="Zebediah", last="Quillfeather", fer=16, current=("N", "B", "N")),
        Student(987655, first="Ottoline", last="Marchbanks", fedethnicity=1, fer=11, lep=1,
                current=("N", "W", "N")),
        Student(987656, first="Persephone", last="Vantongeren", fer=14),
        Student(987656, first="Persephone", last="Vantongeren", fer=13),
        Student("X987657", first="Bartholomew", last="Ironmonger"),
        Student(987659, first="Ignatius", last="Thistlewood", fer=16, current=("N", "A", "N")),
        Student("987659.0", first="Ignatius", last="Thistlewood", fer=12),
        Student(987660, first="Clementine", last="Dunwoody", fer=16, current=("N", "W", "N")),
    ]  # fmt: skip


def leaks(text: str) -> list[str]:
    """Student numbers, names and per-student lines found in text."""
    found = [word for word in (*NUMBERS, *NAMES) if word in text]
    found += [line for line in text.splitlines() if re.search(r"\bstudent [0-9]", line)]
    return found


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def umask_022():
    """A permissive umask, as many servers have: files the script makes must not inherit it.
    Subprocesses (the script, sshd) started during the test inherit it too."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- 1. Files on this machine are owner-only -------------------------------------------


@posix_modes
def test_every_file_of_an_upload_run_is_owner_only_under_umask_022(umask_022, uploading_app, sftp_server):
    app = uploading_app
    result = app.run(*app.base_args, "-v")
    assert result.returncode == 0, result.stderr
    files = {
        "output": app.output,
        "log": app.log_path,
        "state": app.root / "clever_export.state.json",
        "lock": app.root / "clever_export.lock",
    }
    assert {name: oct(mode_of(path)) for name, path in files.items()} == dict.fromkeys(files, oct(0o600))
    assert not list(app.root.glob(".raceethnicity.txt.*"))  # no temporary left, of any mode


@posix_modes
def test_existing_wider_files_are_narrowed_by_the_next_run(umask_022, uploading_app, sftp_server):
    app = uploading_app
    state = app.root / "clever_export.state.json"
    lock = app.root / "clever_export.lock"
    for path, text in ((app.log_path, "2026-01-01 00:00:00,000 INFO an older run\n"),
                       (app.output, "1\tN\tW\tN\n"), (state, "{}"), (lock, "")):  # fmt: skip
        path.write_text(text)
        path.chmod(0o644)
    result = app.run(*app.base_args)
    assert result.returncode == 0, result.stderr
    assert app.log().startswith("2026-01-01 00:00:00,000 INFO an older run\n")  # appended, not replaced
    for path in (app.log_path, app.output, state, lock):
        assert mode_of(path) == 0o600, path.name


@posix_modes
def test_a_failed_run_also_leaves_owner_only_files(umask_022, app, db):
    # An upload that fails at login: the output, log, lock and run record exist all the same.
    env = {"D118_SFTP_ADDRESS": "127.0.0.1", "D118_SFTP_PORT": "1", "D118_SFTP_USERNAME": "u",
           "D118_SFTP_PASSWORD": "Wr0ng-pa55word"}  # fmt: skip
    app.known_hosts.write_text("[127.0.0.1]:1 " + _any_host_key())
    result = app.run("--sqlite", str(db([Student(1001)])), "--retries", "1", "--timeout", "2", env=env)
    assert result.returncode == 4, result.stderr
    for name in ("raceethnicity.txt", "clever_export.log", "clever_export.state.json", "clever_export.lock"):
        assert mode_of(app.root / name) == 0o600, name


def _any_host_key() -> str:
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()


@posix_modes
def test_rotated_logs_are_owner_only(umask_022, monkeypatch, tmp_path, db, capsys):
    monkeypatch.setattr(ce, "LOG_MAX_BYTES", 2000)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    path = str(db(many_students(120)))
    for _ in range(2):  # the second run appends to, and rotates, what the first left
        assert run_main(run_dir, "--sqlite", path, "--no-upload", "-v") == 0
    capsys.readouterr()
    logs = sorted(name for name in os.listdir(run_dir) if name.startswith("run.log"))
    assert logs == ["run.log", *(f"run.log.{i}" for i in range(1, ce.LOG_BACKUPS + 1))]
    assert {name: oct(mode_of(run_dir / name)) for name in os.listdir(run_dir)} == dict.fromkeys(
        os.listdir(run_dir), oct(0o600)
    )  # the logs, out.txt, state.json and clever_export.lock


@posix_modes
def test_rotated_logs_of_a_deployed_script_are_owner_only(umask_022, app, db):
    # Rotation at the real 5 MB in a subprocess: -v writes one line per student.
    path = str(db(many_students(20_000)))
    app.log_path.write_bytes(b"x" * (ce.LOG_MAX_BYTES - 1000) + b"\n")
    app.log_path.chmod(0o644)
    result = app.run("--sqlite", path, "--no-upload", "-v", "-q", timeout=120)
    assert result.returncode == 0, result.stderr
    rotated = app.root / "clever_export.log.1"
    assert rotated.exists()
    assert mode_of(rotated) == 0o600 and mode_of(app.log_path) == 0o600


# --- 2. The uploaded file is not world-readable ------------------------------------------


def openssh_args(app, openssh_server) -> tuple[str, ...]:
    app.known_hosts.write_text(openssh_server.known_hosts_line)
    app.env = {**openssh_server.env(), "PYTHONIOENCODING": "utf-8"}
    return ("--timeout", "10", "--remote-dir", str(openssh_server.remote_dir))


def test_uploaded_file_is_600_by_default_whatever_the_servers_umask(umask_022, app, db, openssh_server):
    # sshd inherits umask 022: without the script's chmod the file would be 644.
    args = openssh_args(app, openssh_server)
    result = app.run("--sqlite", str(db([Student(1001), Student(1002)])), *args)
    assert result.returncode == 0, result.stderr
    final = openssh_server.remote_dir / "raceethnicity.txt"
    assert final.read_bytes() == app.output.read_bytes()
    assert mode_of(final) == 0o600


def test_remote_mode_flag_640(umask_022, app, db, openssh_server):
    args = openssh_args(app, openssh_server)
    result = app.run("--sqlite", str(db([Student(1001)])), *args, "--remote-mode", "640")
    assert result.returncode == 0, result.stderr
    assert mode_of(openssh_server.remote_dir / "raceethnicity.txt") == 0o640


def test_remote_mode_from_the_profile_640(umask_022, app, db, openssh_server, tmp_path):
    config = tmp_path / "profile.toml"
    config.write_text('[output]\nremote_mode = "640"\n')
    args = openssh_args(app, openssh_server)
    result = app.run("--sqlite", str(db([Student(1001)])), *args, "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert mode_of(openssh_server.remote_dir / "raceethnicity.txt") == 0o640


def test_an_admins_600_on_the_remote_file_survives_the_next_upload(umask_022, app, db, openssh_server):
    final = openssh_server.remote_dir / "raceethnicity.txt"
    final.write_bytes(b"yesterday\n")
    final.chmod(0o600)
    args = openssh_args(app, openssh_server)
    result = app.run("--sqlite", str(db([Student(1001)])), *args)
    assert result.returncode == 0, result.stderr
    assert final.read_bytes() == app.output.read_bytes() and mode_of(final) == 0o600


@pytest.mark.parametrize("mode", ["777", "abc", "604", "644", "400", "6400", ""])
def test_bad_remote_mode_exits_2(app, db, mode):
    result = app.run("--sqlite", str(db([Student(1001)])), "--no-upload", "--remote-mode", mode)
    assert result.returncode == 2
    assert "--remote-mode" in one_line(result.stderr)
    assert not app.output.exists()


@pytest.mark.parametrize("mode", ['"777"', '"604"', '"abc"'])
def test_bad_remote_mode_in_the_profile_exits_2(app, db, tmp_path, mode):
    config = tmp_path / "profile.toml"
    config.write_text(f"[output]\nremote_mode = {mode}\n")
    result = app.run("--sqlite", str(db([Student(1001)])), "--no-upload", "--config", str(config))
    assert result.returncode == 2
    assert "output.remote_mode" in one_line(result.stderr)


@posix_modes
def test_the_remote_partial_is_never_world_readable_even_for_an_instant(
    umask_022, uploading_app, sftp_server, monkeypatch
):  # fmt: skip
    created: list[tuple[bytes, int]] = []
    original = asyncssh.SFTPServer.open

    def recording_open(self, path, pflags, attrs):
        file_obj = original(self, path, pflags, attrs)
        created.append((path, stat.S_IMODE(os.fstat(file_obj.fileno()).st_mode)))
        return file_obj

    monkeypatch.setattr(asyncssh.SFTPServer, "open", recording_open)
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert mode_of(sftp_server.remote()) == 0o600
    assert created and all(path.endswith(b".raceethnicity.txt.partial") for path, _ in created)
    assert [oct(mode) for _, mode in created] == [oct(0o600)] * len(created)


# --- 3. A planted link cannot redirect the data ----------------------------------------

OUTSIDE_TEXT = b"a file outside the remote directory: keep me\n"


def snapshot(root, skip) -> dict[str, tuple]:
    """Every path under root (not under skip) with its type, mode and content hash."""
    found = {}
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if os.path.join(directory, d) not in skip]
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            if path in skip:
                continue
            info = os.lstat(path)
            digest = (
                hashlib.sha256(open(path, "rb").read()).hexdigest() if stat.S_ISREG(info.st_mode) else None
            )
            link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
            found[path] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), digest, link)
    return found


def plant(kind: str, at, outside) -> None:
    if kind == "symlink to an existing file":
        at.symlink_to(outside)
    elif kind == "symlink to a missing file":
        outside.unlink()
        at.symlink_to(outside)
    elif kind == "hard link":
        os.link(outside, at)
    elif kind == "read-only file":
        at.write_bytes(b"a stale partial someone made read-only\n")
        at.chmod(0o444)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize(
    ("name", "kind"),
    [(".raceethnicity.txt.partial", "symlink to an existing file"),
     (".raceethnicity.txt.partial", "symlink to a missing file"),
     (".raceethnicity.txt.partial", "hard link"),
     (".raceethnicity.txt.partial", "read-only file"),
     ("raceethnicity.txt", "symlink to an existing file"),
     ("raceethnicity.txt", "symlink to a missing file"),
     ("raceethnicity.txt", "hard link")],
)  # fmt: skip
def test_a_planted_link_on_openssh_does_not_redirect_the_upload(
    app, db, openssh_server, tmp_path, name, kind
):
    outside_dir = tmp_path / "outside"
    outside_dir.mkdir()
    outside = outside_dir / "outside.txt"
    outside.write_bytes(OUTSIDE_TEXT)
    outside.chmod(0o644)
    remote_dir = openssh_server.remote_dir
    plant(kind, remote_dir / name, outside)
    args = openssh_args(app, openssh_server)
    database = db([Student(1001 + i, first="Zoë") for i in range(50)])
    skip = {str(remote_dir), str(app.root), str(tmp_path / "openssh" / "sshd.log")}
    before = snapshot(tmp_path, skip)

    result = app.run("--sqlite", str(database), *args)

    assert result.returncode == 0, result.stderr
    if kind == "symlink to a missing file":
        assert not outside.exists() and not outside.is_symlink()
    else:
        assert outside.read_bytes() == OUTSIDE_TEXT and mode_of(outside) == 0o644
    final = remote_dir / "raceethnicity.txt"
    assert stat.S_ISREG(os.lstat(final).st_mode)
    assert final.read_bytes() == app.output.read_bytes() and len(final.read_bytes()) > 0
    assert mode_of(final) == 0o600
    assert sorted(os.listdir(remote_dir)) == ["raceethnicity.txt"]
    assert snapshot(tmp_path, skip) == before  # nothing created or changed outside


@pytest.mark.parametrize(
    "name", ["raceethnicity.txt", ".raceethnicity.txt.partial", ".raceethnicity.txt.previous"]
)
@posix_symlinks
def test_a_planted_symlink_on_a_server_without_posix_rename(uploading_app, sftp_server, tmp_path, name):
    # The fallback that moves the old file aside must not write through a link either.
    sftp_server.posix_rename = False
    outside = tmp_path / "outside.txt"
    outside.write_bytes(OUTSIDE_TEXT)
    sftp_server.remote("raceethnicity.txt").write_bytes(b"yesterday\n")
    link = sftp_server.remote(name)
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert outside.read_bytes() == OUTSIDE_TEXT
    final = sftp_server.remote()
    assert stat.S_ISREG(os.lstat(final).st_mode) and final.read_bytes() == uploading_app.output.read_bytes()
    assert os.listdir(final.parent) == ["raceethnicity.txt"]


# --- 4. Monitoring gets outcomes, not students ---------------------------------------------


def test_failure_ping_carries_no_student(uploading_app, sftp_server, db, ping_server):
    app = uploading_app
    database = db(privacy_students())
    result = app.run("--sqlite", str(database), "--timeout", "5", "--retry-wait", "0.05", "-v",
                     "--changed-only", "--ping-url", ping_server.url,
                     env={"D118_SFTP_PASSWORD": "Wr0ng-pa55word"})  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "student 987654" in result.log  # the data was there to leak
    paths = [path for path, _ in ping_server.pings]
    assert paths == ["/ping/abc/start", "/ping/abc/fail"]
    body = ping_server.pings[1][1]
    assert "SFTP login as clever" in body  # the outcome
    assert leaks(body) == []
    assert leaks(result.stdout + result.stderr) == []


def test_success_ping_carries_no_student(uploading_app, sftp_server, db, ping_server):
    app = uploading_app
    result = app.run("--sqlite", str(db(privacy_students())), "--timeout", "5", "-v", "--changed-only",
                     "--ping-url", ping_server.url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "student 987654" in result.log
    assert [path for path, _ in ping_server.pings] == ["/ping/abc/start", "/ping/abc"]
    assert "summary:" in ping_server.pings[1][1]
    assert leaks(ping_server.pings[1][1]) == []
    assert "/ping/abc" not in result.everything()


@pytest.mark.parametrize("port", ["ping_server", "closed"])
def test_ping_url_path_never_logged(app, db, ping_server, port):
    port_number = ping_server.server_address[1] if port == "ping_server" else 1
    url = f"http://127.0.0.1:{port_number}/ping/abc"  # (user:pw@ in it exits 2: urllib cannot send it)
    # A failing run (no SFTP settings), so /start and /fail are both tried.
    result = app.run("--sqlite", str(db(privacy_students())), "-v", "--changed-only", "--ping-url", url,
                     env={"D118_SFTP_ADDRESS": "127.0.0.1"})  # fmt: skip
    assert result.returncode == 2
    text = result.stderr + result.log + result.stdout
    for secret in ("/ping/abc", "ping/abc"):
        assert secret not in text, secret
    warnings = [line for line in result.log.splitlines() if "monitoring ping" in line]
    if port == "closed":
        assert warnings and all("monitoring ping to 127.0.0.1 failed" in line for line in warnings)
    else:
        assert not warnings
        assert [path for path, _ in ping_server.pings] == ["/ping/abc/start", "/ping/abc/fail"]
    assert all(leaks(body) == [] for _, body in ping_server.pings)


def test_a_ping_url_in_a_bad_flag_error_is_not_echoed(app):
    # argparse errors come before logging is set up; the URL must not ride along.
    result = app.run("--ping-url", "http://user:pw-secret@127.0.0.1:1/ping/abc", "--timeout", "inf")
    assert result.returncode == 2
    assert "pw-secret" not in result.everything() and "/ping/abc" not in result.everything()


# --- 5. stderr carries no student data -----------------------------------------------------


@pytest.mark.parametrize("mode", [("--no-upload",), ("--dry-run",), ("--no-upload", "-q")])
def test_stderr_and_stdout_name_no_student(app, db, mode):
    result = app.run("--sqlite", str(db(privacy_students())), "-v", "--changed-only", *mode)
    assert result.returncode == 0, result.stderr
    for text in ("student 987654", "student 987656", "X987657", "987659"):
        assert text in result.log, text  # the log file names them, as it may
    assert leaks(result.stdout) == [] and leaks(result.stderr) == []
    if "-q" not in mode:
        assert "student numbers have several active rows" in result.stderr  # a count, not a number


def test_stderr_names_no_student_on_an_upload_run(uploading_app, sftp_server, db):
    result = uploading_app.run(
        "--sqlite", str(db(privacy_students())), "--timeout", "5", "-v", "--changed-only"
    )
    assert result.returncode == 0, result.stderr
    assert leaks(result.stdout) == [] and leaks(result.stderr) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs, filled but for one page: a log there fills up mid-run."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount_point)],
                       check=True, capture_output=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs (needs root on Linux); /dev/full would be chmod-ed by the script")
    try:
        filler = mount_point / "filler"
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(descriptor, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(descriptor)
        os.truncate(filler, max(0, filler.stat().st_size // 4096 * 4096 - 4096))
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False, capture_output=True, timeout=10)


def full_log_run(app, db, log, quiet: bool):
    # Filler students first (they sort first), so the disk is full when ours are logged.
    database = db(many_students(300, first_number=500_000) + privacy_students())
    result = app.run("--sqlite", str(database), "--no-upload", "-v", "--changed-only",
                     "--log-file", str(log), *(["-q"] if quiet else []))  # fmt: skip
    written = log.read_text(encoding="utf-8", errors="replace")
    assert "export started" in written and "student 987654" not in written  # it did fill up mid-run
    return result


@pytest.mark.parametrize("quiet", [False, True])
def test_a_log_that_fills_up_mid_run_puts_no_student_on_stderr(app, db, tiny_tmpfs, quiet):
    result = full_log_run(app, db, tiny_tmpfs / "clever_export.log", quiet)
    assert leaks(result.stderr) == [] and leaks(result.stdout) == []
    warnings = [
        line for line in result.stderr.splitlines() if line.startswith("WARNING: cannot write the log")
    ]
    assert len(warnings) == 1, result.stderr
    assert app.output.exists() and len(app.output.read_text().splitlines()) > 0


@pytest.mark.parametrize("quiet", [False, True])
def test_a_log_that_fills_up_mid_run_keeps_the_runs_exit_code_and_one_line(app, db, tiny_tmpfs, quiet):
    result = full_log_run(app, db, tiny_tmpfs / "clever_export.log", quiet)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    about_log = [line for line in result.stderr.splitlines() if "log file" in line.lower()]
    assert len(about_log) == 1 and about_log[0].startswith("WARNING: cannot write the log file")
    if quiet:
        assert result.stderr.strip().splitlines() == about_log and result.stdout == ""


# --- 6. Redaction reveals nothing ---------------------------------------------------------


def normalised(log: str) -> str:
    """A log without what differs from run to run: times and durations."""
    log = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "T ", log, flags=re.MULTILINE)
    log = re.sub(r"CONNECTION_ID=[^)\s]+", "CONNECTION_ID=X", log)
    return re.sub(r"\b\d+(\.\d+)? (seconds|s)\b", "N seconds", log)


def oracle_run(app, password: str):
    env = {**ORACLE_ENV, "POWERSCHOOL_DB_PASSWORD": password, "POWERSCHOOL_PROD_DB": "127.0.0.1:1/PS"}
    return app.run("--no-upload", "--timeout", "2", env=env, timeout=60)


@pytest.mark.parametrize("password", ["e", "dragon", "export"])
def test_a_short_or_common_password_leaves_the_log_as_it_would_be(app, password):
    control = oracle_run(app, SECRET_DB_PASSWORD)
    result = oracle_run(app, password)
    assert control.returncode == result.returncode == 3
    assert (
        "export started: profile Illinois (ISBE FER, S_IL_STU_X LEP), Oracle 127.0.0.1:1/PS as psnavigator"
        in (result.log)
    )
    for line in result.log.splitlines():  # every line whole: timestamp, level, words
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) \S", line), line
    assert "***" not in result.everything()
    # Letter for letter what a run with an unrelated password logs and prints.
    assert normalised(result.log) == normalised(control.log)
    assert normalised(result.stderr) == normalised(control.stderr)
    assert normalised(result.stdout) == normalised(control.stdout)
    if len(password) > 1 and password not in control.everything():  # "export" is the script's own word
        assert password not in result.everything()


def test_a_common_word_password_is_hidden_where_a_message_carries_it(app):
    # A careless DSN that spells the password: the message shows *** in its place, and only there.
    env = {**ORACLE_ENV, "POWERSCHOOL_DB_PASSWORD": "dragon", "POWERSCHOOL_PROD_DB": "127.0.0.1:1/dragon"}
    result = app.run("--no-upload", "--timeout", "2", env=env, timeout=60)
    assert result.returncode == 3
    assert "dragon" not in result.everything()
    assert "Oracle 127.0.0.1:1/*** as psnavigator" in result.log
    assert "export started: profile Illinois" in result.log


def test_a_traceback_in_the_log_is_redacted_too(monkeypatch, capsys, tmp_path, db):
    def careless(*args, **kwargs):
        raise RuntimeError(f"bug that prints {SECRET_DB_PASSWORD}")

    monkeypatch.setattr(ce, "connect_sqlite", careless)
    # The database password is registered because the run reads it (the DSN is
    # only needed to be set: the source is SQLite, where the bug strikes).
    environ = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "127.0.0.1:1/PS"}
    monkeypatch.setattr(ce, "run_export", _reads_database_settings_then(ce.run_export))
    assert run_main(tmp_path, "--sqlite", str(db([Student(1)])), "--no-upload", environ=environ) == 1
    log = tmp_path / "run.log"
    captured = capsys.readouterr()
    assert "Traceback" in log.read_text() and "bug that prints ***" in log.read_text()
    assert SECRET_DB_PASSWORD not in captured.out + captured.err + log.read_text()


def _reads_database_settings_then(run_export):
    def wrapped(options, state, record):
        ce.database_settings(options.settings.values)
        return run_export(options, state, record)

    return wrapped


def test_secrets_are_redacted_even_if_a_message_carries_one(monkeypatch, capsys, tmp_path):
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": f"127.0.0.1:1/{SECRET_DB_PASSWORD}"}  # a careless DSN
    log = tmp_path / "run.log"
    assert run_main(tmp_path, "--no-upload", "--timeout", "5", environ=env) == 3
    captured = capsys.readouterr()
    assert SECRET_DB_PASSWORD not in captured.out + captured.err + log.read_text()
    assert "***" in captured.err


def test_the_database_password_is_registered_for_redaction_by_each_run(tmp_path):
    # main() forgets earlier runs' secrets, so only this run's registration can pass this.
    ce.register_secret("Some-other-runs-secret")
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "127.0.0.1:1/PS"}
    assert run_main(tmp_path, "--no-upload", "--timeout", "2", environ=env) == 3
    assert ce.redact(f"x {SECRET_DB_PASSWORD} y") == "x *** y"
    assert ce.redact("Some-other-runs-secret") == "Some-other-runs-secret"


def test_database_settings_register_the_password():
    ce._SECRETS.clear()
    ce.database_settings({**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "h:1/s"})
    assert ce.redact(SECRET_DB_PASSWORD) == "***"


# --- 7. A profile cannot aim the output at the script's own files -------------------------


@pytest.mark.parametrize(
    "file_name",
    ["known_hosts", "clever_export.log", "clever_export.state.json", "clever_export.lock", "clever_export.py",
     "clever_export.env", "clever_export.log.1", "../x.txt", "a/b.txt", "..", ".", "x\\y",
     "/etc/passwd", "", " raceethnicity.txt"],
)  # fmt: skip
def test_output_file_name_cannot_name_the_scripts_files(app, db, tmp_path, file_name):
    config = tmp_path / "profile.toml"
    escaped = file_name.replace("\\", "\\\\").replace('"', '\\"')
    config.write_text(f'[output]\nfile_name = "{escaped}"\n', encoding="utf-8")
    (app.root / "clever_export.env").write_text("# settings\n")
    (app.root / "clever_export.env").chmod(0o600)
    database = db([Student(1001), Student(1002)])
    state = app.root / "clever_export.state.json"
    lock = app.root / "clever_export.lock"  # an empty file, taken to record the refused nightly run
    skip = {str(app.log_path), str(state), str(lock)}  # the run's own log, --status record and lock
    before = snapshot(tmp_path, skip)
    for args in (("--no-upload",), ()):  # a nightly run, and one that writes the file only
        result = app.run("--sqlite", str(database), "--config", str(config), *args)
        assert result.returncode == 2, result.stderr
        assert "output.file_name" in one_line(result.stderr)
    assert snapshot(tmp_path, skip) == before  # known_hosts and every other file unchanged
    assert "1001\t" not in app.log()
    if state.exists():
        assert "1001\t" not in state.read_text() and json.loads(state.read_text())
    assert not lock.exists() or lock.read_bytes() == b""


def test_output_file_name_cannot_name_the_profile_it_comes_from(app, db):
    config = app.root / "district.toml"
    profile_text = '[output]\nfile_name = "district.toml"\n'
    config.write_text(profile_text)
    result = app.run("--sqlite", str(db([Student(1001)])), "--no-upload", "--config", "district.toml")
    assert config.read_text() == profile_text
    assert result.returncode == 2 and "output.file_name" in result.stderr


@posix_paths
def test_a_device_as_the_log_is_never_narrowed(app, db):
    # Run as root, a chmod would make /dev/null unusable for every other account.
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    before = os.stat("/dev/null").st_mode
    try:
        result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--log-file", "/dev/null")
        after = os.stat("/dev/null").st_mode
    finally:
        if os.stat("/dev/null").st_mode != before and os.geteuid() == 0:
            os.chmod("/dev/null", stat.S_IMODE(before))  # put the machine back before failing
    assert result.returncode == 0, result.stderr
    assert after == before


# Own files by identity, not spelling: another spelling, a link or a setting naming the same file.


@posix_paths
def test_output_through_a_double_slash_cannot_replace_known_hosts(app, db):
    before = app.known_hosts.read_bytes()
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--output", "/" + str(app.known_hosts))
    assert result.returncode == 2 and "is --known-hosts" in one_line(result.stderr)
    assert app.known_hosts.read_bytes() == before


@posix_symlinks
def test_a_log_file_through_a_symlinked_folder_cannot_append_to_the_env_file(app, db, tmp_path):
    env = app.root / "clever_export.env"
    env.write_text("# settings\n")
    env.chmod(0o600)
    (tmp_path / "alias").symlink_to(app.root)
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "-v",
                     "--log-file", str(tmp_path / "alias" / "clever_export.env"))  # fmt: skip
    assert result.returncode == 2 and "is the env file" in one_line(result.stderr)
    assert env.read_text() == "# settings\n"


def test_output_cannot_overwrite_the_sftp_key_file(app, db):
    key = app.root / "client_key"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    env = {"D118_SFTP_KEY_FILE": "client_key"}
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--output", "client_key", env=env)
    assert result.returncode == 2 and "is D118_SFTP_KEY_FILE" in one_line(result.stderr)
    assert key.read_text() == "-----BEGIN OPENSSH PRIVATE KEY-----\n"


def test_the_kept_copy_cannot_overwrite_a_file_the_run_reads(uploading_app, sftp_server):
    app = uploading_app
    for flag in ("--known-hosts", "--env-file", "--sqlite"):
        target = app.root / "clever_export.sent.txt"
        target.write_text(app.known_hosts.read_text() if flag == "--known-hosts" else "# kept\n")
        target.chmod(0o600)
        before = target.read_bytes()
        result = app.run(*app.base_args, flag, str(target))
        assert result.returncode == 2 and "the import check's copy" in one_line(result.stderr), result.stderr
        assert target.read_bytes() == before
        target.unlink()


def test_a_rotated_log_name_cannot_be_a_file_the_run_reads(uploading_app, sftp_server):
    app = uploading_app
    kept = app.root / "clever_export.log.1"
    kept.write_text(app.known_hosts.read_text())
    result = app.run(*app.base_args, "--known-hosts", str(kept))
    assert result.returncode == 2 and "a rotated log (clever_export.log.1)" in one_line(result.stderr)
    assert kept.read_text() == app.known_hosts.read_text()


@posix_paths
@pytest.mark.parametrize("device", ["/dev/stderr", "/dev/stdout"])
def test_the_log_is_never_a_stream_student_lines_would_reach(app, db, device):
    if not os.path.exists(device):
        pytest.skip(f"{device} does not exist here")
    result = app.run("--sqlite", str(db([Student(1013)])), "--no-upload", "-v", "--log-file", device)
    assert result.returncode == 2 and "exists and is not a regular file" in one_line(result.stderr)
    assert "1013" not in result.stdout + result.stderr


@pytest.mark.parametrize("password", ["failed", "Authentication"])
def test_a_password_that_is_a_word_of_a_standard_message_is_not_given_away(
    uploading_app, sftp_server, password
):
    result = uploading_app.run(
        *uploading_app.base_args, "--retries", "1", env={"D118_SFTP_PASSWORD": password}
    )
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert line.startswith("ERROR: SFTP login as clever on 127.0.0.1:") and "***" not in result.everything()
    assert "Authentication" not in line  # paramiko's constant words, which would frame the password


def test_a_dsn_with_user_colon_password_is_refused_without_showing_it(app):
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": "psnavigator:Wint3rPass@127.0.0.1:1/PSPRODDB"}
    result = app.run("--no-upload", "--timeout", "2", env=env)
    assert result.returncode == 2 and "holds a user/password@ part" in one_line(result.stderr)
    assert "Wint3rPass" not in result.everything()


def test_a_setting_that_is_not_printable_text_is_named_never_shown(app):
    env = {**ORACLE_ENV, "POWERSCHOOL_DB_PASSWORD": "pa\udce9ss", "POWERSCHOOL_PROD_DB": "127.0.0.1:1/PS"}
    result = app.run("--no-upload", "--timeout", "2", env={k: v for k, v in env.items()})
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "POWERSCHOOL_DB_PASSWORD holds characters that are not printable UTF-8 text" in line
    assert "pa" not in line.partition("holds")[2]
