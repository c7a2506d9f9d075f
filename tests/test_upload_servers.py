"""The upload against real SFTP servers, each configured as districts lock them
down: OpenSSH's sftp-server, OpenSSH's internal-sftp in a chroot, ProFTPD's
mod_sftp and gesftpserver.  Each case runs --check, a first upload, an upload
over an existing file and the refusal it configures, and checks the exit code,
the one line on stderr, what is left on the server (nothing but the file, with
its mode), the bytes, and that --check passes exactly when the night does.

tests/test_upload_refusals.py runs the same refusals one at a time against an
asyncssh server.  .ci/run installs the servers (openssh-server, proftpd-core,
proftpd-mod-crypto, gesftpserver); a case whose server is missing is skipped."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import SSHD, CuttingProxy, SftpAccount, Student, _free_port, many_students, one_line, serve

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="sshd, ProFTPD and gesftpserver are tested on Linux only"
)


def _first(*paths: str) -> str | None:
    return next((path for path in paths if os.path.exists(path)), None)


SFTP_SERVER = _first(
    "/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server", "/usr/libexec/openssh/sftp-server"
)
GESFTPSERVER = _first("/usr/libexec/gesftpserver", "/usr/lib/gesftpserver") or shutil.which("gesftpserver")
PROFTPD = shutil.which("proftpd") or _first("/usr/sbin/proftpd")
PROFTPD_MODULES = next(
    (folder for folder in ("/usr/lib/proftpd", "/usr/libexec/proftpd", "/usr/local/libexec/proftpd")
     if os.path.exists(f"{folder}/mod_sftp.so")), None,
)  # fmt: skip
FINAL = "raceethnicity.txt"
PROBE = ".clever_export_check.txt"
YESTERDAY = b"yesterday's file, longer than tonight's and never half-replaced\n" * 50


# --- The servers ----------------------------------------------------------------


@dataclasses.dataclass
class RealServer:
    """One server of the matrix on a free loopback port, logging in the test account."""

    process: subprocess.Popen
    port: int
    host_public_key: str
    folder: Path  # the remote directory on this machine's disk
    remote_dir: str  # the same folder as the account sees it (in its chroot)
    account: SftpAccount

    def remote(self, name: str = FINAL) -> Path:
        return self.folder / name

    def names(self) -> list[str]:
        return sorted(os.listdir(self.folder))

    def clear(self) -> None:
        for name in os.listdir(self.folder):
            os.remove(self.folder / name)

    def plant_yesterdays_file(self) -> None:
        self.remote().write_bytes(YESTERDAY)
        if self.account.is_root:
            shutil.chown(self.remote(), self.account.user, self.account.group)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def host_key(workdir: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "host_key")], check=True
    )
    return " ".join((workdir / "host_key.pub").read_text().split()[:2])


def chroot_problem(folder: Path) -> str | None:
    """Why sshd would refuse `folder` as a ChrootDirectory, if it would."""
    for path in (folder, *folder.parents):
        info = path.stat()
        if info.st_uid != 0 or info.st_mode & 0o022:
            return f"{path} is not root-owned and closed to others, as sshd's ChrootDirectory needs"
    return None


def start_sshd(account: SftpAccount, workdir: Path, kind: str, options: str) -> RealServer:
    """sshd whose sftp subsystem is `kind` (sftp-server, internal-sftp in a chroot,
    gesftpserver), started with `options`."""
    binaries = {"sftp-server": SFTP_SERVER, "internal-sftp": "internal-sftp", "gesftpserver": GESFTPSERVER}
    binary = binaries[kind]
    if SSHD is None or binary is None:
        package = "gesftpserver" if kind == "gesftpserver" else "openssh-server"
        pytest.skip(f"{'sshd' if SSHD is None else kind} is not installed (.ci/run installs {package})")
    if kind == "internal-sftp" and not account.is_root:
        pytest.skip("internal-sftp in a chroot needs root: sshd chroots the account")
    root = workdir / "root"  # the chroot: root-owned, 755
    root.mkdir()
    root.chmod(0o755)
    if kind == "internal-sftp" and (problem := chroot_problem(root)):
        pytest.skip(problem)
    folder = account.own(root / "upload")
    (workdir / "authorized_keys").write_text(account.public_key)
    (workdir / "authorized_keys").chmod(0o644)  # sshd reads it as the account
    public = host_key(workdir)
    if kind == "internal-sftp":
        subsystem = (
            f"Subsystem sftp internal-sftp\nMatch User {account.user}\n"
            f"    ChrootDirectory {root}\n    ForceCommand internal-sftp {options}\n"
        )
    else:
        subsystem = f"Subsystem sftp {binary} {options}\n"
    port = _free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {workdir / 'host_key'}\nPidFile {workdir / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\nAllowUsers {account.user}\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "UsePAM no\nPermitRootLogin prohibit-password\n" + subsystem
    )
    process = serve([SSHD, "-D", "-e", "-f", str(config)], port, workdir / "sshd.log")
    remote_dir = "/upload" if kind == "internal-sftp" else str(folder)
    return RealServer(process, port, public, folder, remote_dir, account)


def start_proftpd(account: SftpAccount, workdir: Path, options: str) -> RealServer:
    """ProFTPD with mod_sftp only, in the foreground, the account in a DefaultRoot."""
    if PROFTPD is None or PROFTPD_MODULES is None:
        missing = "proftpd" if PROFTPD is None else "mod_sftp"
        pytest.skip(f"{missing} is not installed (.ci/run installs proftpd-core and proftpd-mod-crypto)")
    if not account.is_root:
        pytest.skip("ProFTPD needs root: it switches to the account at login")
    root = workdir / "root"
    root.mkdir()
    root.chmod(0o755)
    folder = account.own(root / "upload")
    public = host_key(workdir)
    keys = subprocess.run(  # mod_sftp reads RFC 4716 public keys
        ["ssh-keygen", "-e", "-f", str(account.key_file) + ".pub"], check=True, capture_output=True, text=True
    )
    (workdir / "authorized_keys").write_text(keys.stdout)
    port = _free_port()
    config = workdir / "proftpd.conf"
    config.write_text(
        f'ServerType standalone\nServerName "clever_export test"\nDefaultAddress 127.0.0.1\n'
        f"SocketBindTight on\nUseIPv6 off\nPort {port}\nUser {account.user}\nGroup {account.group}\n"
        f"PidFile {workdir / 'proftpd.pid'}\nScoreboardFile {workdir / 'proftpd.scoreboard'}\n"
        f"DelayTable none\nWtmpLog off\nUseReverseDNS off\nTransferLog none\n"
        f"SystemLog {workdir / 'proftpd.log'}\nModulePath {PROFTPD_MODULES}\nLoadModule mod_sftp.c\n"
        f"SFTPEngine on\nSFTPLog {workdir / 'sftp.log'}\nSFTPHostKey {workdir / 'host_key'}\n"
        f"SFTPAuthMethods publickey\nSFTPAuthorizedUserKeys file:{workdir / 'authorized_keys'}\n"
        f"DefaultRoot {root}\n{options}\n"
    )
    process = serve([PROFTPD, "-n", "-q", "-c", str(config)], port, workdir / "proftpd.stderr")
    return RealServer(process, port, public, folder, "/upload", account)


@pytest.fixture(scope="module")
def real_server(sftp_account):
    """real_server(kind, options) -> that server, started once for the module,
    its remote directory emptied for each test."""
    started: dict[tuple[str, str], RealServer] = {}

    def get(kind: str, options: str = "") -> RealServer:
        if (kind, options) not in started:
            workdir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=sftp_account.base))
            workdir.chmod(0o755)  # on the chroot's path
            umask = os.umask(0o022)  # the servers' own umask, as most have
            try:
                if kind == "proftpd":
                    started[kind, options] = start_proftpd(sftp_account, workdir, options)
                else:
                    started[kind, options] = start_sshd(sftp_account, workdir, kind, options)
            finally:
                os.umask(umask)
        server = started[kind, options]
        server.clear()
        return server

    yield get
    for server in started.values():
        server.stop()


def deploy(app, db, server: RealServer, *args: str):
    """The deployed script, trusting the server and logging in its account with a key."""
    app.known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
    app.env = {
        "D118_SFTP_ADDRESS": "127.0.0.1",
        "D118_SFTP_PORT": str(server.port),
        "D118_SFTP_USERNAME": server.account.user,
        "D118_SFTP_KEY_FILE": str(server.account.key_file),
        "PYTHONIOENCODING": "utf-8",
    }
    app.db_path = db([Student(1001 + i, fer=16) for i in range(10)])
    app.base_args = ("--sqlite", str(app.db_path), "--timeout", "5", "--retry-wait", "0.05",
                     "--remote-dir", server.remote_dir, *args)  # fmt: skip
    return app


# --- The checks each case makes ---------------------------------------------------


def night(app):
    return app.run(*app.base_args)


def check(app):
    return app.run("--check", *app.base_args)


def warnings(checked) -> list[str]:
    return [line for line in checked.stdout.splitlines() if line.startswith("[WARN]")]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def succeeded(app, server: RealServer, result, mode: int = 0o600, warning: str = "", left=()) -> None:
    """Exit 0; no word on stderr, or the one warning; tonight's bytes with the mode; nothing else left."""
    assert result.returncode == 0, result.stderr
    if warning:
        assert one_line(result.stderr).startswith("WARNING: " + warning), result.stderr
    else:
        assert result.stderr == ""
    assert f"uploaded to 127.0.0.1:{server.remote_dir}/{FINAL}" in result.log
    assert server.remote().read_bytes() == app.output.read_bytes()
    assert mode_of(server.remote()) == mode
    assert server.names() == sorted([FINAL, *left])


def failed(result, message: str) -> str:
    """Exit 4 with the one line naming the refused operation; never retried."""
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert message in line, line
    assert "firewall" not in line and "gave up" not in line and "attempt" not in result.log
    return line


def verdicts_agree(checked, night_result, *warned: str) -> None:
    """--check passed exactly when the night did; a refusal it named is the night's;
    its warnings are `warned`, or none."""
    assert (checked.returncode == 0) == (night_result.returncode == 0), (checked.stdout, night_result.stderr)
    if night_result.returncode:
        failure = [line for line in checked.stdout.splitlines() if line.startswith("[FAIL] remote directory")]
        refused = one_line(night_result.stderr).partition("refused ")[2].partition(" ")[0]
        assert failure and f"refused {refused} " in failure[0], (checked.stdout, night_result.stderr)
    else:
        assert "all checks passed" in checked.stdout, checked.stdout
    for words in warned:
        assert any(words in line for line in warnings(checked)), (words, checked.stdout)
    if not warned:
        assert warnings(checked) == [], checked.stdout


def first_and_over(app, server: RealServer, mode: int = 0o600, warning: str = "", check_warns=()) -> None:
    """--check, then a first upload and one over yesterday's file: successes, as --check said,
    with `warning` on stderr (or none) and `check_warns` among --check's [WARN] lines."""
    checked = check(app)
    for name in server.names():  # only the probe a refused delete left, as --check warned
        assert name == PROBE and check_warns, server.names()
        os.remove(server.remote(name))
    first = night(app)
    succeeded(app, server, first, mode, warning)
    verdicts_agree(checked, first, *check_warns)
    server.plant_yesterdays_file()
    succeeded(app, server, night(app), mode, warning)


# --- The matrix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["sftp-server", "internal-sftp", "proftpd", "gesftpserver"],
    ids=["openssh-sftp-server", "openssh-internal-sftp-chroot", "proftpd-mod_sftp", "gesftpserver"],
)  # fmt: skip
def test_check_a_first_upload_and_one_over_it(real_server, app, db, kind):
    server = real_server(kind)
    first_and_over(deploy(app, db, server), server)


def test_openssh_sftp_server_refuses_a_folder_the_account_cannot_write(real_server, app, db):
    server = real_server("sftp-server")
    locked = server.folder.parent / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)  # the account's, or root's with the account logged in: no writes
    deploy(app, db, server, "--remote-dir", str(locked))
    result = night(app)
    failed(result, f"the server refused OPEN {locked}/.{FINAL}.partial (permission denied): "
                   f"the account needs create and write rights in {locked}/")  # fmt: skip
    assert os.listdir(locked) == []
    verdicts_agree(check(app), result)


def test_internal_sftp_refusing_chmod_sends_none_when_open_gave_the_mode(real_server, app, db):
    server = real_server("internal-sftp", "-P setstat,fsetstat -u 0077")
    first_and_over(deploy(app, db, server), server)  # OPEN's mode 600 survives umask 077: no chmod


def test_internal_sftp_refusing_chmod_warns_with_the_mode_its_umask_gave(real_server, app, db):
    server = real_server("internal-sftp", "-P setstat,fsetstat -u 0077")
    deploy(app, db, server, "--remote-mode", "640")
    refused = "the server refused chmod 640 on /upload/{}.partial (permission denied); the file has mode 600"
    first_and_over(app, server, 0o600, refused.format("." + FINAL), check_warns=[refused.format(PROBE)])


def test_internal_sftp_umask_077_is_corrected_by_the_chmod(real_server, app, db):
    server = real_server("internal-sftp", "-u 0077")
    first_and_over(deploy(app, db, server, "--remote-mode", "640"), server, 0o640)


NO_POSIX_RENAME = {"internal-sftp": "-P posix-rename", "proftpd": "SFTPExtensions -posixRename"}
NO_DELETE = {"internal-sftp": "-P remove", "proftpd": "<Limit DELE>\n  DenyAll\n</Limit>"}


@pytest.mark.parametrize("kind", ["internal-sftp", "proftpd"])
def test_a_server_refusing_posix_rename_moves_the_old_file_aside(real_server, app, db, kind):
    server = real_server(kind, NO_POSIX_RENAME[kind])
    first_and_over(deploy(app, db, server), server)


@pytest.mark.parametrize("kind", ["internal-sftp", "proftpd"])
def test_a_server_refusing_delete_needs_none(real_server, app, db, kind):
    server = real_server(kind, NO_DELETE[kind])
    refused = f"the server refused REMOVE /upload/{PROBE} (permission denied)"
    first_and_over(deploy(app, db, server), server, check_warns=[refused])


def cleanup_refused_twice(app, server: RealServer):
    """A first night, then one over yesterday's file whose cleanup is refused: a
    success that leaves the moved-aside file; --check before it agreed."""
    succeeded(app, server, night(app))
    server.plant_yesterdays_file()
    checked = check(app)
    for name in (PROBE, f"{PROBE}.previous"):  # what its refused deletes left, as it warned
        os.remove(server.remote(name))
    second = night(app)
    previous = f".{FINAL}.previous"
    refused = f"the server refused REMOVE {server.remote_dir}/{previous} (permission denied)"
    succeeded(app, server, second, warning="tonight's file is in place, but " + refused, left=[previous])
    verdicts_agree(checked, second, f"the server refused REMOVE {server.remote_dir}/{PROBE}.previous")
    return refused


def test_internal_sftp_refusing_rename_over_and_delete_leaves_the_old_file_aside_then_fails(
    real_server, app, db
):
    server = real_server("internal-sftp", "-P posix-rename,remove")
    refused = cleanup_refused_twice(deploy(app, db, server), server)
    third = night(app)  # the moved-aside file is in the way, and cannot be deleted
    line = failed(third, refused + ": the account needs delete rights in /upload/")
    assert line.endswith(f"; the temporary file /upload/.{FINAL}.partial is left on the server "
                         "(its removal was refused: permission denied); delete it there")  # fmt: skip
    assert server.remote().read_bytes() == app.output.read_bytes()  # last night's file still in place


def test_internal_sftp_check_fails_where_the_leftover_blocks_the_night(real_server, app, db):
    server = real_server("internal-sftp", "-P posix-rename,remove")
    cleanup_refused_twice(deploy(app, db, server), server)
    checked = check(app)
    verdicts_agree(checked, night(app))  # both refuse REMOVE of the leftover .previous


def test_proftpd_denying_chmod_is_a_warning_with_the_mode_the_file_has(real_server, app, db):
    server = real_server("proftpd", "<Limit SITE_CHMOD>\n  DenyAll\n</Limit>")
    refused = "the server refused chmod 600 on /upload/{}.partial (permission denied); the file has mode 644"
    first_and_over(
        deploy(app, db, server), server, 0o644, refused.format("." + FINAL), [refused.format(PROBE)]
    )


def test_proftpd_denying_rename_fails_naming_it_and_keeps_yesterdays_file(real_server, app, db):
    server = real_server("proftpd", "<Limit RNFR RNTO>\n  DenyAll\n</Limit>")
    deploy(app, db, server)
    first = night(app)
    failed(first, f"the server refused RENAME /upload/.{FINAL}.partial -> /upload/{FINAL} (permission denied): "
                  "the account needs rename/delete rights in ")  # fmt: skip
    assert server.names() == []  # the temporary file was removed
    verdicts_agree(check(app), first)
    assert server.names() == []
    server.plant_yesterdays_file()
    over = night(app)
    failed(
        over, f"the server refused RENAME /upload/{FINAL} -> /upload/.{FINAL}.previous (permission denied)"
    )
    assert server.remote().read_bytes() == YESTERDAY and server.names() == [FINAL]
    verdicts_agree(check(app), over)


def test_proftpd_denying_rename_names_the_folder(real_server, app, db):
    server = real_server("proftpd", "<Limit RNFR RNTO>\n  DenyAll\n</Limit>")
    line = one_line(night(deploy(app, db, server)).stderr)
    assert line.endswith("the account needs rename/delete rights in /upload/"), line


def test_gesftpserver_read_only_fails_naming_open_and_keeps_yesterdays_file(real_server, app, db):
    server = real_server("gesftpserver", "--readonly")
    deploy(app, db, server)
    first = night(app)
    failed(first, f"the server refused OPEN {server.remote_dir}/.{FINAL}.partial (permission denied): "
                  f"the account needs create and write rights in {server.remote_dir}/")  # fmt: skip
    assert server.names() == []
    verdicts_agree(check(app), first)
    server.plant_yesterdays_file()
    over = night(app)
    failed(over, f"the server refused OPEN {server.remote_dir}/.{FINAL}.partial (permission denied)")
    assert server.remote().read_bytes() == YESTERDAY and server.names() == [FINAL]
    verdicts_agree(check(app), over)


# --- A leftover the account cannot delete never blocks a night ------------------------


@pytest.mark.parametrize(
    ("kind", "options"),
    list(NO_DELETE.items()),
    ids=["openssh-internal-sftp-no-remove", "proftpd-deny-dele"],
)
def test_a_leftover_partial_the_account_cannot_delete_never_blocks_a_night(
    real_server, app, db, kind, options
):
    server = real_server(kind, options)
    deploy(app, db, server)
    app.db_path = db(many_students(15_000))  # ~200 KB: the upload is cut well inside it
    args = (
        "--sqlite",
        str(app.db_path),
        "--timeout",
        "5",
        "--retries",
        "1",
        "--remote-dir",
        server.remote_dir,
    )
    proxy = CuttingProxy(server.port, cut_after=120_000)
    try:
        app.known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {server.host_public_key}\n")
        cut = app.run(*args, env={"D118_SFTP_PORT": str(proxy.port)})
    finally:
        proxy.close()
    assert cut.returncode == 4 and proxy.cut.is_set(), cut.stderr
    partial = f".{FINAL}.partial"
    assert server.names() == [partial]  # the cut connection could not remove it
    app.known_hosts.write_text(f"[127.0.0.1]:{server.port} {server.host_public_key}\n")
    left = f"{server.remote_dir}/{partial}"
    checked = check(app)
    assert checked.returncode == 0 and "all checks passed" in checked.stdout, checked.stdout
    (warned,) = [line for line in warnings(checked) if partial in line]
    assert f"refused REMOVE {left}" in warned and "holds student data: delete it there" in warned
    result = night(app)
    assert result.returncode == 0, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"WARNING: the server refused REMOVE {left} (permission denied)"), line
    assert "the account needs delete rights" in line and "holds student data" in line
    assert server.remote().read_bytes() == app.output.read_bytes()
    assert server.names() == sorted([FINAL, partial, PROBE])  # the leftover, and --check's probe, as warned


def test_a_check_that_fails_after_its_probe_names_the_probe_it_leaves(real_server, app, db):
    server = real_server("proftpd", "SFTPExtensions -posixRename\n<Limit DELE>\n  DenyAll\n</Limit>")
    succeeded(app, server, night(deploy(app, db, server)))
    server.plant_yesterdays_file()
    night(app)  # moves yesterday's file aside, and cannot delete it: .previous is left
    checked = check(app)
    assert checked.returncode == 4
    (failure,) = [line for line in checked.stdout.splitlines() if line.startswith("[FAIL] remote directory")]
    assert f"refused REMOVE {server.remote_dir}/.{FINAL}.previous" in failure
    assert failure.endswith(
        f"the probe file {server.remote_dir}/{PROBE} (no student data) is left: delete it there"
    )
    assert PROBE in server.names()
