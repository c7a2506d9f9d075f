"""Failures an admin meets at night, one test each: the exit code, ONE line on
stderr naming the thing and the fix, no traceback, nothing uploaded after the
failure, and no retry where a retry cannot help.

Restricted algorithms and writes the server answers with Failure come from
conftest's fault_server (its SftpServer with those faults switched on).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import asyncssh
import pytest
from conftest import (
    ORACLE_ENV,
    SECRET_DB_PASSWORD,
    SECRET_KEY_PASSPHRASE,
    SECRET_SFTP_PASSWORD,
    Student,
    many_students,
    one_line,
    posix_modes,
    posix_paths,
    posix_signals,
    remote_names,
)
from conftest import clever_export as ce

# --- Helpers ----------------------------------------------------------------------


def assert_no_secret(result) -> None:
    for secret in (SECRET_SFTP_PASSWORD, SECRET_KEY_PASSPHRASE, SECRET_DB_PASSWORD):
        assert secret not in result.everything()


def key_env(key_file: Path, passphrase: str | None = SECRET_KEY_PASSPHRASE) -> dict[str, str]:
    """Log in with a key file instead of the fixture's password."""
    return {
        "D118_SFTP_PASSWORD": "",
        "D118_SFTP_KEY_FILE": str(key_file),
        "D118_SFTP_KEY_PASSPHRASE": passphrase or "",
    }


def private_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def temporaries(folder: Path) -> list[str]:
    """Temporary files a run may leave beside its output or state file."""
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


def big_export(app, db, students: int = 3000):
    """An export several SFTP writes long (~18 bytes a student)."""
    app.db_path = db(many_students(students))
    app.base_args = ("--sqlite", str(app.db_path), "--timeout", "5", "--retry-wait", "0.05")
    return app


def warnings_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if " WARNING " in line]


def errors_in(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("ERROR")]


def wording(line: str, tmp_path: Path) -> str:
    """A message without the test's folder, whose name (pytest's) repeats the test's words."""
    return line.replace(str(tmp_path), "TMP")


def deploy_for(app, server, db, students: list[Student] | None = None):
    """The deployed script trusting `server` and reading a small database."""
    app.known_hosts.write_text(server.known_hosts_line())
    app.env = {**server.env(), "PYTHONIOENCODING": "utf-8"}
    app.db_path = db(students or [Student(1001 + i) for i in range(10)])
    app.base_args = ("--sqlite", str(app.db_path), "--timeout", "5", "--retry-wait", "0.05")
    return app


# --- A tiny file system, for a full or read-only disk (root on Linux only) --------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 16 KiB tmpfs: mount(8) needs root; skipped where it cannot be had."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


# =============================================================================
# 1. D118_SFTP_KEY_FILE problems: exit 2 at once, naming the variable
# =============================================================================


def assert_key_refused_at_once(result, sftp_server, app) -> str:
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert sftp_server.connections == 0  # checked before any connection
    assert not app.output.exists()  # and before the database is read
    assert remote_names(sftp_server) == []
    assert_no_secret(result)
    return line


def test_wrong_passphrase_for_an_openssh_key_names_the_passphrase_variable(uploading_app, sftp_server):
    env = key_env(sftp_server.key_file, "Wrong-passphrase-never-printed")
    result = uploading_app.run(*uploading_app.base_args, env=env)
    line = assert_key_refused_at_once(result, sftp_server, uploading_app)
    assert "D118_SFTP_KEY_PASSPHRASE" in line and "does not open" in line
    assert str(sftp_server.key_file) in line
    assert "Wrong-passphrase-never-printed" not in result.everything()


def pem_rsa_key(path: Path, passphrase: bytes | None) -> Path:
    """A traditional PEM key ("BEGIN RSA PRIVATE KEY", as old ssh-keygen wrote)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return private_file(
        path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, encryption
        ),
    )


def test_wrong_passphrase_for_a_pem_key_names_the_passphrase_variable(uploading_app, sftp_server, tmp_path):
    key_file = pem_rsa_key(tmp_path / "id_rsa", b"the-right-one")
    assert b"ENCRYPTED" in key_file.read_bytes()
    result = uploading_app.run(*uploading_app.base_args, env=key_env(key_file, "Wrong-passphrase-x"))
    line = assert_key_refused_at_once(result, sftp_server, uploading_app)
    assert "D118_SFTP_KEY_PASSPHRASE" in line and "does not open" in line and str(key_file) in line


def test_putty_ppk_key_says_convert_with_puttygen(uploading_app, sftp_server, tmp_path):
    key_file = private_file(
        tmp_path / "clever.ppk",
        b"PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: clever\nPublic-Lines: 2\n",
    )
    result = uploading_app.run(*uploading_app.base_args, env=key_env(key_file))
    line = assert_key_refused_at_once(result, sftp_server, uploading_app)
    assert "D118_SFTP_KEY_FILE" in line and "PuTTY" in line and "puttygen" in line
    assert "private-openssh" in line


def test_a_file_that_is_not_a_key_is_named_with_the_fix(uploading_app, sftp_server, tmp_path):
    key_file = private_file(tmp_path / "id_ed25519", b"ssh-ed25519 AAAA this is a public key line\n")
    result = uploading_app.run(*uploading_app.base_args, env=key_env(key_file))
    line = assert_key_refused_at_once(result, sftp_server, uploading_app)
    assert "D118_SFTP_KEY_FILE" in line and str(key_file) in line
    assert "not a private key" in line and "ssh-keygen" in line


def test_a_key_file_that_is_a_directory(uploading_app, sftp_server, tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    result = uploading_app.run(*uploading_app.base_args, env=key_env(folder))
    line = assert_key_refused_at_once(result, sftp_server, uploading_app)
    assert "D118_SFTP_KEY_FILE" in line and "is a directory" in line and str(folder) in line


def test_a_missing_key_file(uploading_app, sftp_server, tmp_path):
    missing = tmp_path / "no_such_key"
    result = uploading_app.run(*uploading_app.base_args, env=key_env(missing))
    line = assert_key_refused_at_once(result, sftp_server, uploading_app)
    assert "D118_SFTP_KEY_FILE" in line and "does not exist" in line and str(missing) in line


@posix_modes
def test_a_key_file_others_can_read_says_chmod_600(uploading_app, sftp_server):
    sftp_server.key_file.chmod(0o644)
    result = uploading_app.run(*uploading_app.base_args, env=key_env(sftp_server.key_file))
    line = assert_key_refused_at_once(result, sftp_server, uploading_app)
    assert "D118_SFTP_KEY_FILE" in line and f"chmod 600 {sftp_server.key_file}" in line


def test_an_unencrypted_key_with_a_leftover_passphrase_is_not_called_unreadable(
    uploading_app, sftp_server, tmp_path
):
    plain = private_file(tmp_path / "id_ed25519", sftp_server.client_key.export_private_key("openssh"))
    result = uploading_app.run(*uploading_app.base_args, env=key_env(plain, SECRET_KEY_PASSPHRASE))
    if result.returncode == 0:  # the passphrase ignored, as OpenSSH does
        assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    else:
        assert result.returncode == 2
        assert "D118_SFTP_KEY_PASSPHRASE" in one_line(result.stderr)


# =============================================================================
# 2. No common algorithm: exit 4 at once, naming which kind is missing
# =============================================================================


@pytest.mark.parametrize(
    ("algorithms", "offered"),
    [
        ({"kex_algs": ["diffie-hellman-group1-sha1"]}, "no acceptable kex algorithm"),
        ({"encryption_algs": ["chacha20-poly1305@openssh.com"]}, "no acceptable ciphers"),
        pytest.param(
            {"encryption_algs": ["aes256-ctr"], "mac_algs": ["umac-64@openssh.com"]},
            "no acceptable macs",
            marks=pytest.mark.skipif(
                b"umac-64@openssh.com" not in asyncssh.mac.get_mac_algs(),
                reason="the test server's umac MACs need libnettle (asyncssh), absent on Windows",
            ),
        ),
    ],
    ids=["kex", "cipher", "mac"],
)
def test_no_common_algorithm_exits_4_naming_the_offer(app, db, fault_server, algorithms, offered):
    server = fault_server(**algorithms)
    deploy_for(app, server, db)
    result = app.run(*app.base_args)
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert "no common algorithm" in line and f"127.0.0.1:{server.port}" in line
    assert offered in line  # which kind of algorithm is missing, so its admin knows what to enable
    assert "curve25519-sha256" in line  # and what to enable
    assert "gave up" not in line and "firewall" not in line
    assert server.connections == 1  # not retried
    assert remote_names(server) == []
    assert result.seconds < 30


# =============================================================================
# 3. The server refusing a write: exit 4, not retried, no partial file left
# =============================================================================


def test_a_write_refused_mid_transfer_exits_4_not_retried_and_leaves_no_partial(app, db, fault_server):
    server = fault_server(fail_writes_after=40_000)
    deploy_for(app, server, db, many_students(5000))
    server.remote().write_bytes(b"last night's complete file\n")
    result = app.run(*app.base_args)
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    size = app.output.stat().st_size
    assert size > 40_000 and server.refused_writes >= 1
    assert f"refused the write of {size} bytes to /sftp/clever/.raceethnicity.txt.partial" in line
    assert "firewall" not in line and "gave up" not in line
    assert server.connections == 1  # a full disk is not a network failure: not retried
    assert server.remote().read_bytes() == b"last night's complete file\n"
    assert remote_names(server) == ["raceethnicity.txt"]  # no .raceethnicity.txt.partial left
    assert_no_secret(result)


# A file of many writes (they are not pipelined: each is answered before the next).
LARGE_DISTRICT = 20_000  # students: ~250 KB, 8 writes of 32 KiB


def test_a_write_refused_in_a_large_file_is_named_not_retried_and_leaves_no_partial(app, db, fault_server):
    server = fault_server(fail_writes_after=40_000)
    deploy_for(app, server, db, many_students(LARGE_DISTRICT))
    result = app.run(*app.base_args, timeout=120)
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    size = app.output.stat().st_size
    assert size > 4 * 32768
    assert f"refused the write of {size} bytes to /sftp/clever/.raceethnicity.txt.partial" in line
    assert "firewall" not in line and "gave up" not in line
    assert server.connections == 1
    assert remote_names(server) == []


def test_a_write_refused_in_a_large_file_never_lands_half_a_file(app, db, fault_server):
    """What holds today for the large file: exit 4, the previous file kept."""
    server = fault_server(fail_writes_after=40_000)
    deploy_for(app, server, db, many_students(LARGE_DISTRICT))
    server.remote().write_bytes(b"last night's complete file\n")
    result = app.run(*app.base_args, timeout=120)
    assert result.returncode == 4
    assert len(errors_in(result.stderr)) == 1 and "Traceback" not in result.stderr
    assert server.remote().read_bytes() == b"last night's complete file\n"


def test_one_write_refused_mid_file_never_lands_a_file_with_a_hole(app, db, fault_server):
    server = fault_server(fail_writes_after=40_000, refuse_once=True)
    deploy_for(app, server, db, many_students(10_000))
    server.remote().write_bytes(b"last night's complete file\n")
    result = app.run(*app.base_args)
    assert server.refused_writes == 1
    landed = server.remote().read_bytes()
    assert b"\0" not in landed  # never a corrupted file for the importer
    assert landed in (b"last night's complete file\n", app.output.read_bytes())
    if landed != app.output.read_bytes():
        assert result.returncode == 4
        one_line(result.stderr)


# =============================================================================
# 4. A remote final path that is a directory
# =============================================================================


@pytest.mark.parametrize("posix_rename", [True, False], ids=["posix-rename", "plain-rename"])
def test_a_remote_final_path_that_is_a_directory_is_left_alone(uploading_app, sftp_server, posix_rename):
    sftp_server.posix_rename = posix_rename
    final = sftp_server.remote()
    final.mkdir()
    (final / "inside.txt").write_bytes(b"someone's file\n")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert "/sftp/clever/raceethnicity.txt" in line and "is a directory" in line
    assert "output.file_name" in line
    assert final.is_dir() and os.listdir(final) == ["inside.txt"]
    assert (final / "inside.txt").read_bytes() == b"someone's file\n"
    assert remote_names(sftp_server) == ["raceethnicity.txt"]  # no .previous, no .partial
    assert sftp_server.connections == 1


# =============================================================================
# 5. known_hosts
# =============================================================================


def server_key_part(sftp_server) -> str:
    return sftp_server.known_hosts_line().split(" ", 1)[1].strip()


def test_a_revoked_host_key_alone_is_refused_as_revoked(uploading_app, sftp_server, tmp_path):
    uploading_app.known_hosts.write_text(
        f"@revoked [127.0.0.1]:{sftp_server.port} {server_key_part(sftp_server)}\n"
    )
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4
    line = wording(one_line(result.stderr), tmp_path)
    assert "revoked" in line and "--show-host-key" not in line
    assert remote_names(sftp_server) == []


def test_a_revoked_host_key_alone_is_refused_and_nothing_uploaded(uploading_app, sftp_server):
    """What holds today: refused, exit 4, before any connection, nothing uploaded."""
    uploading_app.known_hosts.write_text(
        f"@revoked [127.0.0.1]:{sftp_server.port} {server_key_part(sftp_server)}\n"
    )
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4
    one_line(result.stderr)
    assert remote_names(sftp_server) == [] and sftp_server.connections == 0


@pytest.mark.parametrize("revoked_host", ["[127.0.0.1]:{port}", "*"])
def test_a_revoked_host_key_is_refused_even_where_a_plain_line_lists_it(
    uploading_app, sftp_server, tmp_path, revoked_host
):
    key = server_key_part(sftp_server)
    uploading_app.known_hosts.write_text(
        sftp_server.known_hosts_line() + f"@revoked {revoked_host.format(port=sftp_server.port)} {key}\n"
    )
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4, result.stderr
    line = one_line(result.stderr)
    assert "is marked @revoked" in wording(line, tmp_path)
    assert str(uploading_app.known_hosts) in line
    assert sftp_server.connections == 0  # refused before any connection
    assert remote_names(sftp_server) == []


def test_unusable_known_hosts_lines_are_skipped_with_their_line_numbers(uploading_app, sftp_server):
    key = server_key_part(sftp_server)
    uploading_app.known_hosts.write_text(
        "# the district's known_hosts\n"  # line 1
        f"@cert-authority *.example.org {key}\n"  # line 2
        f"[127.0.0.1]:{sftp_server.port} ssh-frobnicate AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n"  # line 3
        f"[127.0.0.1]:{sftp_server.port} ssh-ed25519 AAAA!!!not*base64===\n"  # line 4
        + sftp_server.known_hosts_line()  # line 5: the good one
    )
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    warnings = warnings_in(result.log)
    for number in (2, 3, 4):
        assert any(f"{uploading_app.known_hosts} line {number} skipped" in w for w in warnings), (
            number,
            warnings,
        )
    assert any("line 2 skipped" in w and "@cert-authority" in w for w in warnings)
    assert not any("line 5" in w for w in warnings)
    assert "Traceback" not in result.everything()


def test_a_known_hosts_of_only_unusable_lines_is_an_unknown_host(uploading_app, sftp_server):
    key = server_key_part(sftp_server)
    uploading_app.known_hosts.write_text(
        f"@cert-authority [127.0.0.1]:{sftp_server.port} {key}\n"
        f"[127.0.0.1]:{sftp_server.port} ssh-frobnicate AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n"
        f"[127.0.0.1]:{sftp_server.port} ssh-ed25519 AAAA!!!not*base64===\n"
    )
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "--show-host-key" in errors[0] and f"[127.0.0.1]:{sftp_server.port}" in errors[0]
    assert sftp_server.connections == 0 and not uploading_app.output.exists()
    assert len(warnings_in(result.log)) >= 3


def test_a_known_hosts_that_is_a_directory_exits_2(uploading_app, sftp_server):
    uploading_app.known_hosts.unlink()
    uploading_app.known_hosts.mkdir()
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(uploading_app.known_hosts) in line and "is a directory" in line and "--known-hosts" in line
    assert sftp_server.connections == 0 and not uploading_app.output.exists()


def test_a_known_hosts_that_is_not_utf8_exits_2(uploading_app, sftp_server):
    uploading_app.known_hosts.write_bytes(
        b"\xff\xfe[\x001\x002\x007\x00" + sftp_server.known_hosts_line().encode()
    )
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert str(uploading_app.known_hosts) in line and "not UTF-8" in line and "--show-host-key" in line
    assert sftp_server.connections == 0 and not uploading_app.output.exists()


# =============================================================================
# 6. The machine: exit 2 naming the path or flag
# =============================================================================


@pytest.mark.skipif(os.name != "posix", reason="POSIX folder modes: Windows decides by ACLs")
def test_an_output_folder_the_account_cannot_write_exits_2(tmp_path):
    """As the service account would meet it: an unprivileged user (root writes anywhere,
    so a root CI drops to nobody with setpriv, the deployed script beside its own libraries)."""
    import shutil
    import tempfile

    import dotenv
    import filelock
    from conftest import REPO, make_db

    base = Path(tempfile.mkdtemp(prefix="clever_unprivileged_"))  # outside root's 700 folders
    try:
        base.chmod(0o755)
        deployed = base / "deploy"
        shutil.copytree(REPO / "demo", deployed / "demo")
        shutil.copy2(REPO / "clever_export.py", deployed)
        for package in (filelock, dotenv):  # pure Python: importable by any account from here
            shutil.copytree(Path(package.__file__).parent, base / "lib" / Path(package.__file__).parent.name)
        make_db(deployed / "ps.sqlite", [Student(1)])
        folder = base / "readonly"
        folder.mkdir(mode=0o555)
        command = [getattr(sys, "_base_executable", sys.executable), str(deployed / "clever_export.py"),
                   "--sqlite", "ps.sqlite", "--no-upload", "--output", str(folder / "out.txt")]  # fmt: skip
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv to drop to an unprivileged user")
            for path in [deployed, *deployed.rglob("*")]:
                os.chown(path, 65534, 65534)  # the service account owns its install, not the folder
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=base, stdin=subprocess.DEVNULL,
                                env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(base / "lib")})  # fmt: skip
        assert result.returncode == 2, result.stdout + result.stderr
        line = one_line(result.stderr)
        assert str(folder) in line and "--output" in line and "Permission denied" in line
        assert os.listdir(folder) == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


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
# 9. Database messages keep the cause
# =============================================================================


def test_an_oracle_port_that_refuses_keeps_the_driver_code_and_the_cause(app):
    port = closed_port()
    env = {**ORACLE_ENV, "POWERSCHOOL_PROD_DB": f"127.0.0.1:{port}/PS"}
    result = app.run("--no-upload", "--timeout", "3", env=env, timeout=60)
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "DPY-6005" in line and "Connection refused" in line
    assert f"127.0.0.1:{port}/PS" in line and "POWERSCHOOL_PROD_DB" in line
    assert SECRET_DB_PASSWORD not in result.everything()
    assert not app.output.exists()


# =============================================================================
# 10. No current-values table
# =============================================================================


def drop_current_values(path: Path) -> Path:
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE u_def_ext_students0")
    connection.commit()
    connection.close()
    return path


def test_dry_run_without_the_current_values_table_warns_and_reports(app, db):
    path = drop_current_values(db([Student(1, fer=16), Student(2, fer=13)]))
    result = app.run("--sqlite", str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing uploaded" in result.stdout and "exported students: 2" in result.stdout
    assert any("u_def_ext_students0" in w and "current_values.table" in w for w in warnings_in(result.log))
    assert app.output.read_bytes() == b"1\tN\tW\tN\n2\tN\tA\tN\n"


def test_changed_only_without_the_current_values_table_exits_3(app, db):
    path = drop_current_values(db([Student(1)]))
    result = app.run("--sqlite", str(path), "--no-upload", "--changed-only")
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "current_values.table" in line and "u_def_ext_students0" in line
    assert not app.output.exists()


# =============================================================================
# 11. A profile query ending in ';' or a comment
# =============================================================================

QUERY_BODY = ce.ILLINOIS_QUERY


@pytest.mark.parametrize(
    "ending",
    [
        ";",
        " -- active students only",
        "; -- active students only",
        ";\n-- the end\n\n",
        " ; -- it's 'done'; really",
    ],
    ids=["semicolon", "comment", "semicolon-comment", "comment-line", "quote-in-comment"],
)
def test_a_query_ending_in_a_semicolon_or_comment_works_in_every_mode(app, db, tmp_path, ending):
    students = [
        Student(1, fer=16, current=("N", "W", "N")),
        Student(2, fer=13, lep=1, current=("N", "W", "N")),
        Student(3, fedethnicity=1, fer=11),
    ]
    path = str(db(students))
    config = tmp_path / "district.toml"
    config.write_text(f"[students]\nquery = '''\n{QUERY_BODY}{ending}'''\n", encoding="utf-8")
    baseline = app.run("--sqlite", path, "--no-upload", "--output", "baseline.txt")
    assert baseline.returncode == 0, baseline.stderr
    outputs = {}
    for mode in ("--no-upload", "--dry-run"):
        result = app.run("--sqlite", path, mode, "--config", str(config))
        assert result.returncode == 0, (mode, result.stderr)
        outputs[mode] = app.output.read_bytes()
    assert outputs["--no-upload"] == outputs["--dry-run"] == (app.root / "baseline.txt").read_bytes()
    changed = app.run("--sqlite", path, "--no-upload", "--changed-only", "--config", str(config))
    assert changed.returncode == 0, changed.stderr
    assert app.output.read_bytes() == b"2\tN\tA\tY\n3\tY\t\tN\n"


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
