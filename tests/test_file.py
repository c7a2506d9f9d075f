"""The file: UTF-8 without BOM, LF, tabs, no header, atomic replacement."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    NO_ROW,
    Student,
    big_export,
    closed_port,
    one_line,
    posix_fifo,
    posix_modes,
    posix_paths,
    posix_symlinks,
    remote_names,
    temporaries,
    warnings_in,
)
from conftest import clever_export as ce


def write(lines, path):
    with ce.atomic_file(path, "--output") as stream:
        stream.writelines(lines)


def test_bytes_are_utf8_lf_tab_without_bom(tmp_path):
    path = tmp_path / "out.txt"
    write(["1001\tY\tW\tN\n", "1002\t\t\tN\n"], path)
    data = path.read_bytes()
    assert data == b"1001\tY\tW\tN\n1002\t\t\tN\n"
    assert not data.startswith(b"\xef\xbb\xbf") and b"\r" not in data


def test_a_crash_mid_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(b"yesterday\n")

    def lines_then_crash():
        yield "1001\tY\tW\tN\n"
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        write(lines_then_crash(), path)
    assert path.read_bytes() == b"yesterday\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_end_to_end_file_from_sqlite(app, db):
    students = [
        Student(1003, first="José", last="Muñoz", fedethnicity=1, fer=11, lep=1),
        Student(1001.0, first="Zoë", last="Ødegård", fedethnicity=0, fer=16, lep=NO_ROW),
        Student(1002, fedethnicity=-1, fer=[15, 15], lep=[1, 1]),  # duplicate extension rows
        Student(1004, enroll=2),  # transferred out
        Student(1005, enroll=-1),  # pre-registered
        Student(1006, first="TEST", last="Kid"),
        Student(1007, fedethnicity=None, fer=NO_ROW, lep=None),
        Student(1008, fedethnicity=" 1 ", fer="14.0", lep="1"),
    ]
    result = app.run("--sqlite", str(db(students)), "--no-upload")
    assert result.returncode == 0, result.stderr
    assert app.output.read_bytes() == (
        b"1001\tN\tW\tN\n1002\t\tP\tY\n1003\tY\t\tY\n1007\t\t\tN\n1008\tY\tB\tY\n"
    )
    assert "written 5, skipped 1, exported 5" in result.stdout
    assert "blank Hispanic_Latino 2, blank Race 2, blank ELL 0" in result.log


def test_output_flag_and_ordering_by_student_number(app, db, tmp_path):
    out = tmp_path / "elsewhere" / "export.txt"
    path = db([Student(30), Student(4), Student(200)])
    assert app.run("--sqlite", str(path), "--no-upload", "--output", str(out)).returncode == 0
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == ["4", "30", "200"]


def test_demo_writes_the_sample_file(app):
    result = app.run("--demo")
    assert result.returncode == 0, result.stderr
    lines = (app.root / ce.DEMO_OUTPUT_NAME).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 51
    by_number = {line.split("\t")[0]: line.split("\t")[1:] for line in lines}
    assert by_number["1005"] == ["N", "P", "N"]  # FER 15
    assert by_number["1010"] == ["", "A", "N"]  # FEDETHNICITY -1
    assert by_number["1013"] == ["N", "W", "N"]  # 1013.0
    assert "1041" not in by_number and "1044" not in by_number  # test student, graduated
    assert not app.output.exists()  # the demo never touches the real export file


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--output", "known_hosts"], "--output"),
        (["--output", "clever_export.py"], "--output"),
        (["--output", "clever_export.env"], "--output"),
        (["--state-file", "clever_export.env"], "--state-file"),
        (["--log-file", "known_hosts"], "--log-file"),
        (["--output", "same.txt", "--state-file", "same.txt"], "--output and --state-file"),
        (["--output", "clever_export.sent.txt"], "--output"),
    ],
)
def test_no_flag_can_aim_a_written_file_at_the_scripts_own_files(app, db, flags, named):
    app.env["POWERSCHOOL_DB_PASSWORD"] = "x"
    (app.root / "clever_export.env").write_text("# settings\n")
    (app.root / "clever_export.env").chmod(0o600)
    before = {p.name: p.read_bytes() for p in app.root.iterdir() if p.is_file()}
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", *flags)
    assert result.returncode == 2 and named in result.stderr, result.stderr
    after = {p.name: p.read_bytes() for p in app.root.iterdir() if p.is_file()}
    assert {name: after.get(name) for name in before} == before


@posix_symlinks
def test_a_script_started_by_a_link_of_another_name_still_protects_itself(app, db):
    """bin/clever-export -> ../clever_export.py: --output cannot name the script either."""
    (app.root / "bin").mkdir()
    (app.root / "bin" / "clever-export").symlink_to(Path("..", "clever_export.py"))
    script = (app.root / "clever_export.py").read_bytes()
    done = subprocess.run(
        [sys.executable, str(app.root / "bin" / "clever-export"), "--sqlite", str(db([Student(1)])),
         "--no-upload", "--output", str(app.root / "clever_export.py")],
        capture_output=True, text=True, timeout=60, env=app.environment(), stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2 and "the script" in one_line(done.stderr), done.stderr
    assert (app.root / "clever_export.py").read_bytes() == script


@posix_modes
def test_folders_the_script_creates_are_the_accounts_alone(app, db):
    old = os.umask(0)
    try:
        result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--output", "out/sub/x.txt",
                         "--log-file", "logs/x.log", "--state-file", "st/s.json")  # fmt: skip
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    for folder in ("out", "out/sub", "logs", "st"):
        assert (app.root / folder).stat().st_mode & 0o077 == 0, folder


@posix_fifo
@pytest.mark.parametrize("flag", ["--output", "--state-file"])
def test_a_device_or_pipe_is_never_replaced_by_a_file(app, db, tmp_path, flag):
    # As root, a rename over /dev/null would put student data where /dev/null was;
    # a named pipe stands in for the device, so a failing test breaks nothing.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", flag, str(pipe))
    assert result.returncode == 2 and "not a regular file" in result.stderr
    assert pipe.exists() and not pipe.is_file()


@pytest.mark.skipif(os.name != "nt", reason="Windows refuses to replace a file another program holds open")
def test_an_output_file_held_open_by_another_program_is_named_as_in_use(tmp_path):
    path = tmp_path / "out.txt"
    path.write_bytes(b"yesterday\n")
    with open(path, "rb"), pytest.raises(ce.ConfigError) as refused:  # an editor, a scanner
        write(["1001\tY\tW\tN\n"], path)
    assert "is in use by another program" in str(refused.value)
    assert "the previous file is unchanged" in str(refused.value)
    assert path.read_bytes() == b"yesterday\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_known_hosts_with_a_bom_and_crlf_is_read(uploading_app, sftp_server):
    line = sftp_server.known_hosts_line().strip()
    uploading_app.known_hosts.write_bytes(b"\xef\xbb\xbf# the SFTP server\r\n" + line.encode() + b"\r\n")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr


# =============================================================================
# 6. The machine: exit 2 naming the path or flag
# =============================================================================


class ServiceAccount:
    """A deployed copy as the service account meets it, outside root's 700 folders,
    beside the two pure-Python libraries a run without an upload needs.  Root
    writes anywhere, so a root CI runs it as nobody (setpriv) and hands nobody the
    install; another account runs it as itself, and files "another account owns"
    are then mode 000 to it."""

    def __init__(self, base: Path):
        import shutil

        import dotenv
        import filelock
        from conftest import REPO, make_db

        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop to an unprivileged user")
        base.chmod(0o755)
        self.base, self.deployed = base, base / "deploy"
        shutil.copytree(REPO / "demo", self.deployed / "demo")
        shutil.copy2(REPO / "clever_export.py", self.deployed)
        for package in (filelock, dotenv):  # pure Python: importable by any account from here
            shutil.copytree(Path(package.__file__).parent, base / "lib" / Path(package.__file__).parent.name)
        make_db(self.deployed / "ps.sqlite", [Student(1)])
        for path in [self.deployed, *self.deployed.rglob("*")]:
            self.give(path)

    @property
    def fix(self) -> str:
        """What the refusal of a file take() made says to do."""
        return "As root: chown nobody " if os.geteuid() == 0 else "check the mode of "

    def give(self, path: Path) -> Path:
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
        return path

    def take(self, path: Path) -> Path:
        """As if a run as root had made `path`: another account's, mode 600."""
        if os.geteuid() == 0:
            os.chown(path, 0, 0)
            path.chmod(0o600)
        else:
            path.chmod(0)
        return path

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        command = [
            getattr(sys, "_base_executable", sys.executable),
            str(self.deployed / "clever_export.py"),
            *args,
        ]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        environment = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(self.base / "lib"),
            **(env or {}),
        }
        return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.base,
                              stdin=subprocess.DEVNULL, env=environment)  # fmt: skip


@pytest.fixture
def service_account():
    import shutil
    import tempfile

    if os.name != "posix":
        pytest.skip("POSIX owners and modes: Windows decides by ACLs")
    base = Path(tempfile.mkdtemp(prefix="clever_unprivileged_"))
    try:
        yield ServiceAccount(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_output_folder_the_account_cannot_write_exits_2(service_account):
    folder = service_account.base / "readonly"
    folder.mkdir(mode=0o555)
    result = service_account.run("--sqlite", "ps.sqlite", "--no-upload", "--output", str(folder / "out.txt"))
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line(result.stderr)
    assert str(folder) in line and "--output" in line and "Permission denied" in line
    assert os.listdir(folder) == []


def test_after_a_run_as_root_the_night_fails_naming_the_chown_and_status_shows_it(service_account):
    deployed = service_account.deployed
    sftp = {"D118_SFTP_ADDRESS": "127.0.0.1", "D118_SFTP_PORT": str(closed_port()),
            "D118_SFTP_USERNAME": "clever", "D118_SFTP_PASSWORD": "not-used-tonight"}  # fmt: skip
    state = ce.State(deployed / "clever_export.state.json")
    state.last_run = ce.RunRecord(started="2026-11-30T01:30:00+0000", finished="2026-11-30T01:31:00+0000",
                                  exit_code=0, message="succeeded")  # fmt: skip
    state.last_upload = ce.UploadRecord(students=1, at=ce.now_text(), bytes=12, remote_path="/sftp/x.txt")
    state.save()
    service_account.give(state.path)
    for name in ("clever_export.log", "clever_export.lock"):  # what --show-host-key and --check as root leave
        (deployed / name).touch()
        service_account.take(deployed / name)

    night = service_account.run("--sqlite", "ps.sqlite", env=sftp)
    assert night.returncode == 2, night.stdout + night.stderr
    line = one_line(night.stderr)
    assert "clever_export.log" in line and service_account.fix in line, line
    status = service_account.run("--status", "--max-age", "26")
    assert status.returncode == 2 and "cannot write log file" in status.stdout, (
        status.stdout
    )  # not last week's success

    for name in ("clever_export.log", "clever_export.lock"):
        (deployed / name).unlink()
    service_account.take(state.path)
    night = service_account.run("--sqlite", "ps.sqlite", env=sftp)
    line = one_line(night.stderr)
    assert night.returncode == 2 and "state file" in line and service_account.fix in line, line
    assert "--force" not in line
    assert "import check skipped: no previous upload" not in (deployed / "clever_export.log").read_text()
    trial = service_account.run("--sqlite", "ps.sqlite", "--no-upload")  # needs no state: still runs
    assert trial.returncode == 0, trial.stderr

    service_account.give(state.path).chmod(0o600)
    env_file = deployed / "clever_export.env"  # edited as root, say
    env_file.write_text("D118_SFTP_USERNAME=clever\n")
    service_account.take(env_file)
    night = service_account.run("--sqlite", "ps.sqlite", env=sftp)
    line = one_line(night.stderr)
    assert night.returncode == 2 and "env file" in line and service_account.fix in line, line


def test_an_output_folder_that_is_a_file_exits_2(app, db, tmp_path):
    not_a_folder = tmp_path / "reports"
    not_a_folder.write_text("a file, not a folder\n")
    result = app.run(
        "--sqlite", str(db([Student(1)])), "--no-upload", "--output", str(not_a_folder / "out.txt")
    )
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(not_a_folder) in line and "--output" in line
    assert not_a_folder.read_text() == "a file, not a folder\n"


def test_a_profile_that_is_not_utf8_exits_2(app, db, tmp_path):
    config = tmp_path / "district.toml"
    config.write_bytes(b'[profile]\nname = "D\xe9partement 118"\n')  # Latin-1, as Notepad once saved
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--config", str(config))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(config) in line and "UTF-8" in line and "--config" in line
    assert not app.output.exists()


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--timeout", "inf"),
        ("--timeout", "nan"),
        ("--timeout", "-inf"),
        ("--timeout", "0"),
        ("--retry-wait", "-1"),
        ("--retry-wait", "nan"),
        ("--retries", "0"),
        ("--retries", "1000000"),
        ("--max-drop", "nan"),
        ("--max-drop", "101"),
        ("--max-drop", "-5"),
    ],
)
def test_absurd_numbers_exit_2_naming_the_flag(app, db, flag, value):
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", f"{flag}={value}")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert f"{flag} must be a number from" in line and value in line.lower()
    assert not app.output.exists()


@pytest.mark.parametrize("where", [pytest.param("proc", marks=posix_paths), "under-a-file"])
def test_a_lock_file_that_cannot_be_created_exits_2(app, db, tmp_path, where):
    if where == "proc":
        if not Path("/proc/self").exists():
            pytest.skip("no /proc here")
        lock = Path("/proc/nope/lock")
    else:
        plain = tmp_path / "plain-file"
        plain.write_text("not a folder\n")
        lock = plain / "clever_export.lock"
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", "--lock-file", str(lock))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert str(lock) in line and "--lock-file" in line
    assert not app.output.exists()


@pytest.mark.parametrize("flag", ["--output", "--lock-file"])
def test_a_folder_that_is_a_file_is_called_so(app, db, tmp_path, flag):
    plain = tmp_path / "plain-file"
    plain.write_text("not a folder\n")
    result = app.run("--sqlite", str(db([Student(1)])), "--no-upload", flag, str(plain / "name"))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "File exists" not in line and "not a folder" in line.replace("directory", "folder")


# =============================================================================
# 7. A state file that cannot be written after a successful upload
# =============================================================================


def test_a_state_file_on_a_read_only_disk_warns_and_the_run_succeeds(uploading_app, sftp_server, tiny_tmpfs):
    state = tiny_tmpfs / "clever_export.state.json"
    state.write_text(json.dumps({"last_upload": {"students": 10}}))
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True, timeout=30)
    lock = uploading_app.root / "elsewhere.lock"
    result = uploading_app.run(*uploading_app.base_args, "--state-file", str(state), "--lock-file", str(lock))
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert any("the upload succeeded, but" in w and str(tiny_tmpfs) in w for w in warnings_in(result.log))
    assert "Traceback" not in result.everything()
    assert json.loads(state.read_text()) == {"last_upload": {"students": 10}}  # unchanged


def unusable_state_path(where: str, app, tmp_path: Path) -> Path:
    """A --state-file path that can be neither read nor written."""
    if where == "directory":
        state = app.root / "clever_export.state.json"
        state.mkdir()
        return state
    plain = tmp_path / "plain-file"
    plain.write_text("not a folder\n")
    return plain / "clever_export.state.json"


@pytest.mark.parametrize("where", ["directory", "under-a-file"])
@pytest.mark.parametrize("force", [False, True])
def test_an_unusable_state_path_is_a_setting_to_fix_in_one_line(
    uploading_app, sftp_server, tmp_path, where, force
):
    # Not a state file that cannot be read (exit 5, --force rewrites it): a path that
    # can never hold one. --force cannot help; the admin fixes --state-file.
    state = unusable_state_path(where, uploading_app, tmp_path)
    args = (*uploading_app.base_args, "--state-file", str(state), "--lock-file", str(tmp_path / "run.lock"))
    result = uploading_app.run(*args, *(["--force"] if force else []))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "--state-file" in line and "--output" not in line
    assert sftp_server.connections == 0 and remote_names(sftp_server) == []
    assert temporaries(uploading_app.root) == []
    assert (
        state.is_dir() if where == "directory" else (tmp_path / "plain-file").read_text() == "not a folder\n"
    )


# =============================================================================
# 13. A full disk in the middle of writing the export
# =============================================================================


def test_a_full_disk_mid_export_exits_2_in_one_line_and_keeps_the_previous_file(
    uploading_app, sftp_server, db, tiny_tmpfs
):
    app = big_export(uploading_app, db, 3000)
    output = tiny_tmpfs / "raceethnicity.txt"
    output.write_bytes(b"last night's file\n")
    result = app.run(*app.base_args, "--output", str(output))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "Exception ignored" not in result.stderr
    assert f"cannot write {output}" in line and "previous file is unchanged" in line
    assert output.read_bytes() == b"last night's file\n"
    assert temporaries(tiny_tmpfs) == []
    assert sftp_server.connections == 0 and remote_names(sftp_server) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX owners")
def test_an_account_passwd_does_not_list_is_named_by_its_number(monkeypatch):
    import pwd

    def unlisted(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", unlisted)
    assert ce.account_name(4242) == "4242"


@pytest.mark.skipif(os.name != "posix", reason="POSIX owners")
def test_the_fix_for_a_refused_file_follows_its_owner(tmp_path):
    """Root's file: the chown back (as the service account reads it); another account's:
    run as that account (a monitoring user must not be told to take the job's files)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make files other accounts own")
    import pwd

    refused = tmp_path / "x y" / "clever_export.log"  # the file itself need not exist
    refused.parent.mkdir()
    os.chown(refused.parent, 65534, 65534)
    assert (
        ce.give_back(refused)
        == f"{refused.parent} belongs to {pwd.getpwuid(65534).pw_name}: run this as that account"
    )
    os.chown(refused.parent, 0, 0)
    assert (
        ce.give_back(refused) == f"check the mode of {refused.parent}"
    )  # root, refused: not an owner problem
