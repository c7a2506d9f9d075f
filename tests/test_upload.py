"""Uploads against real SSH servers on loopback: asyncssh's, and OpenSSH's sshd."""

import os
import socket
from pathlib import Path

import asyncssh
import paramiko
import pytest
from conftest import (
    SECRET_KEY_PASSPHRASE,
    Student,
    assert_no_secret,
    deploy_for,
    errors_in,
    key_env,
    many_students,
    one_line,
    posix_modes,
    private_file,
    remote_names,
    warnings_in,
    wording,
)
from conftest import clever_export as ce


def test_password_login_uploads_the_file_byte_identical(uploading_app, sftp_server):
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert uploading_app.output.read_bytes().startswith(b"1001\tN\tW\tN\n")
    assert remote_names(sftp_server) == ["raceethnicity.txt"]  # no temporary file left
    assert "uploaded to 127.0.0.1:/sftp/clever/raceethnicity.txt" in result.log
    assert_no_secret(result)


def test_an_existing_remote_file_is_replaced(uploading_app, sftp_server):
    sftp_server.remote().write_bytes(b"yesterday's much longer file\n" * 100)
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert remote_names(sftp_server) == ["raceethnicity.txt"]


def test_key_login_with_passphrase(uploading_app, sftp_server):
    env = {"D118_SFTP_PASSWORD": "", "D118_SFTP_KEY_FILE": str(sftp_server.key_file),
           "D118_SFTP_KEY_PASSPHRASE": SECRET_KEY_PASSPHRASE}  # fmt: skip
    result = uploading_app.run(*uploading_app.base_args, "-v", env=env)
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert_no_secret(result)


def test_remote_dir_flag(uploading_app, sftp_server):
    (sftp_server.root / "other").mkdir()
    result = uploading_app.run(*uploading_app.base_args, "--remote-dir", "/other")
    assert result.returncode == 0, result.stderr
    assert (
        sftp_server.root / "other" / "raceethnicity.txt"
    ).read_bytes() == uploading_app.output.read_bytes()


def test_hashed_known_hosts_entry_is_accepted(uploading_app, sftp_server):
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{sftp_server.port}")
    key_part = sftp_server.known_hosts_line().split(" ", 1)[1]
    uploading_app.known_hosts.write_text(f"# comment\n{hashed} {key_part}")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr


def test_wrong_host_key_refuses_and_uploads_nothing(uploading_app, sftp_server):
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    uploading_app.known_hosts.write_text(sftp_server.known_hosts_line(impostor))
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4
    assert "does not match known_hosts" in result.stderr and "SHA256:" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert remote_names(sftp_server) == []
    assert sftp_server.connections == 1  # host-key problems are never retried
    assert_no_secret(result)


def test_unknown_host_refuses_before_reading_the_database(uploading_app, sftp_server):
    uploading_app.known_hosts.write_text(f"[127.0.0.1]:1 {sftp_server.known_hosts_line().split(' ', 1)[1]}")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4
    assert "has no usable host key for" in result.stderr and "--show-host-key" in result.stderr
    assert f"only for 127.0.0.1 on port 1: is D118_SFTP_PORT {sftp_server.port} right?" in one_line(
        result.stderr
    )
    assert sftp_server.connections == 0 and not uploading_app.output.exists()


def test_a_known_hosts_line_without_a_port_is_named_as_the_port_22_form(uploading_app, sftp_server):
    uploading_app.known_hosts.write_text(f"127.0.0.1 {sftp_server.known_hosts_line().split(' ', 1)[1]}")
    result = uploading_app.run(*uploading_app.base_args)
    line = one_line(result.stderr)
    assert result.returncode == 4 and "a line names 127.0.0.1 without a port, which means port 22" in line
    assert f"must begin [127.0.0.1]:{sftp_server.port}" in line and "right?" not in line
    check = uploading_app.run("--check", *uploading_app.base_args)
    assert "without a port, which means port 22" in check.stdout


def test_a_closed_connection_is_not_a_refusal_but_a_servers_status_is():
    """After Ctrl-C closed the connection, "its removal was refused" would send an admin to the server."""
    assert ce.refusal(OSError("Socket is closed")) is None  # paramiko's text once the channel is gone
    assert ce.refusal(OSError("Failure")) == "failure"
    assert ce.refusal(PermissionError(13, "Permission denied")) == "permission denied"


def test_a_port_known_hosts_cannot_mean_is_not_taken_for_one(uploading_app, sftp_server):
    key = sftp_server.known_hosts_line().split(" ", 1)[1]
    uploading_app.known_hosts.write_text(
        f"[127.0.0.1]:\u00b2 {key}[127.0.0.1]:99999 {key}", encoding="utf-8"
    )  # ²: isdigit()
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 4, result.stderr
    assert "port 99999" in one_line(result.stderr)


def test_a_host_known_hosts_never_names_asks_whether_the_address_is_right(uploading_app, sftp_server):
    result = uploading_app.run(*uploading_app.base_args, env={"D118_SFTP_ADDRESS": "sftp.typo.invalid"})
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert (
        "no usable host key for [sftp.typo.invalid]" in line
        and "is D118_SFTP_ADDRESS sftp.typo.invalid right?" in line
    )


def test_missing_known_hosts_is_a_configuration_error(uploading_app, sftp_server):
    uploading_app.known_hosts.unlink()
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 2
    assert "known_hosts file" in result.stderr and "does not exist" in result.stderr
    assert sftp_server.connections == 0


def test_wrong_password_exits_4_and_never_shows_it(uploading_app, sftp_server):
    wrong = "Wr0ng-pa55word-never-printed"
    result = uploading_app.run(*uploading_app.base_args, env={"D118_SFTP_PASSWORD": wrong})
    assert result.returncode == 4
    assert "SFTP login as clever" in result.stderr and "D118_SFTP_PASSWORD" in result.stderr
    assert wrong not in result.everything()
    assert sftp_server.connections == 1  # login failures are never retried
    assert remote_names(sftp_server) == []


def test_runs_from_another_working_directory(uploading_app, sftp_server, tmp_path):
    elsewhere = tmp_path / "System32"
    elsewhere.mkdir()
    result = uploading_app.run(*uploading_app.base_args, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert os.listdir(elsewhere) == []  # nothing lands in the working directory
    assert uploading_app.output.exists() and uploading_app.log_path.exists()
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()


def test_show_host_key_prints_a_line_that_parses_back(uploading_app, sftp_server):
    uploading_app.known_hosts.write_text("# empty\n")
    result = uploading_app.run("--show-host-key", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    entries = [line for line in result.stdout.splitlines() if line and not line.startswith("#")]
    assert len(entries) == 1
    entry = paramiko.hostkeys.HostKeyEntry.from_line(entries[0])
    assert entry.hostnames == [f"[127.0.0.1]:{sftp_server.port}"]
    expected = paramiko.PKey.from_type_string("ssh-ed25519", sftp_server.host_key.public_data)
    assert entry.key == expected
    assert f"# 256 {expected.fingerprint} [127.0.0.1]:{sftp_server.port} (ED25519)" in result.stdout
    assert sftp_server.remote().exists() is False  # trusted nothing, uploaded nothing
    # The printed line is all the export needs.
    uploading_app.known_hosts.write_text(entries[0] + "\n")
    assert uploading_app.run(*uploading_app.base_args).returncode == 0


# --- OpenSSH ----------------------------------------------------------------------


def test_openssh_upload_with_hashed_known_hosts(app, db, openssh_server):
    line = openssh_server.known_hosts_line
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{openssh_server.port}")
    app.known_hosts.write_text(f"{hashed} {line.split(' ', 1)[1]}")
    final = openssh_server.remote_dir / "raceethnicity.txt"
    final.write_bytes(b"old\n")
    args = ("--sqlite", str(db([Student(n, first="Zoë") for n in range(1, 2000)])), "--timeout", "10",
            "--remote-dir", str(openssh_server.remote_dir))  # fmt: skip
    result = app.run(*args, env=openssh_server.env())
    assert result.returncode == 0, result.stderr
    assert final.read_bytes() == app.output.read_bytes()
    assert os.listdir(openssh_server.remote_dir) == ["raceethnicity.txt"]
    assert SECRET_KEY_PASSPHRASE not in result.everything()


def test_openssh_wrong_host_key(app, db, openssh_server):
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    app.known_hosts.write_text(f"[127.0.0.1]:{openssh_server.port} {impostor}")
    result = app.run("--sqlite", str(db([Student(1)])), "--remote-dir", str(openssh_server.remote_dir),
                     env=openssh_server.env())  # fmt: skip
    assert result.returncode == 4 and "does not match known_hosts" in result.stderr
    assert os.listdir(openssh_server.remote_dir) == []


def test_servers_without_posix_rename_still_get_the_file_replaced(uploading_app, sftp_server):
    sftp_server.posix_rename = False
    sftp_server.remote().write_bytes(b"yesterday\n")
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert remote_names(sftp_server) == ["raceethnicity.txt"]  # no .previous or .partial left
    sftp_server.remote().unlink()  # and the first upload, with nothing to replace
    assert uploading_app.run(*uploading_app.base_args).returncode == 0
    assert remote_names(sftp_server) == ["raceethnicity.txt"]


def test_missing_remote_directory_exits_4_saying_so(uploading_app, sftp_server):
    result = uploading_app.run(*uploading_app.base_args, "--remote-dir", "/not/there")
    assert result.returncode == 4
    assert "create the remote directory or fix --remote-dir" in result.stderr
    assert sftp_server.connections == 1  # not a network failure: not retried


def test_encrypted_key_without_passphrase_says_which_variable(uploading_app, sftp_server):
    env = {"D118_SFTP_PASSWORD": "", "D118_SFTP_KEY_FILE": str(sftp_server.key_file)}
    result = uploading_app.run(*uploading_app.base_args, env=env)
    assert result.returncode == 2 and sftp_server.connections == 0
    assert "D118_SFTP_KEY_PASSPHRASE" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unreadable_key_file_is_a_configuration_error(uploading_app, sftp_server, tmp_path):
    env = {"D118_SFTP_PASSWORD": "", "D118_SFTP_KEY_FILE": str(tmp_path / "missing_key")}
    result = uploading_app.run(*uploading_app.base_args, env=env)
    assert result.returncode == 2 and "D118_SFTP_KEY_FILE" in result.stderr
    assert sftp_server.connections == 0


def test_show_host_key_of_an_unreachable_server_exits_4(app, silent_listener):
    env = {"D118_SFTP_ADDRESS": "127.0.0.1", "D118_SFTP_PORT": str(silent_listener)}
    result = app.run("--show-host-key", "--timeout", "1", env=env, timeout=30)
    assert result.returncode == 4 and "the SFTP key exchange on 127.0.0.1" in result.stderr
    assert "did not finish within 1 seconds" in result.stderr
    assert result.stdout == "" and result.seconds < 10


def openssh_args(app, server) -> tuple[str, ...]:
    app.known_hosts.write_text(server.known_hosts_line)
    app.env = {**server.env(), "PYTHONIOENCODING": "utf-8"}
    return ("--remote-dir", str(server.remote_dir), "--timeout", "5", "--retry-wait", "0.05")


def test_a_chatty_login_script_is_named_at_night_and_by_check(app, db, chatty_openssh_server):
    args = openssh_args(app, chatty_openssh_server)
    database = str(db([Student(1)]))
    result = app.run("--sqlite", database, *args)
    assert result.returncode == 4
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in result.stderr
    assert "printed text into the SFTP session (a login script such as .bashrc echoing" in line
    assert "make it silent" in line and "unexpected error" not in line and "gave up" not in line
    checked = app.run("--check", "--sqlite", database, *args)
    failures = [row for row in checked.stdout.splitlines() if row.startswith("[FAIL]")]
    assert (
        len(failures) == 1 and failures[0].startswith("[FAIL] SFTP login: ") and "printed text" in failures[0]
    )
    assert "remote directory" in checked.stdout and "not checked: login failed" in checked.stdout


def test_two_keys_of_one_type_for_one_host_are_both_trusted(app, db, openssh_server, tmp_path):
    # A key rotation, or two servers behind one name: OpenSSH accepts a key that matches any line.
    other = tmp_path / "other_host_key"
    __import__("subprocess").run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
    )
    other_line = f"[127.0.0.1]:{openssh_server.port} " + " ".join(
        other.with_suffix(".pub").read_text().split()[:2]
    )
    args = openssh_args(app, openssh_server)
    for lines in (
        [openssh_server.known_hosts_line, other_line],
        [other_line, openssh_server.known_hosts_line],
    ):
        app.known_hosts.write_text("\n".join(line.strip() for line in lines) + "\n")
        result = app.run("--sqlite", str(db([Student(1)])), *args)
        assert result.returncode == 0, result.stderr
    # @revoked still wins over a plain line for the same key.
    real_key = openssh_server.known_hosts_line.split(" ", 1)[1].strip()
    app.known_hosts.write_text(
        f"{other_line}\n{openssh_server.known_hosts_line.strip()}\n@revoked * {real_key}\n"
    )
    refused = app.run("--sqlite", str(db([Student(1)])), *args)
    assert refused.returncode == 4 and "@revoked" in refused.stderr


def test_a_closed_port_names_its_cause_in_words(uploading_app, sftp_server):

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    uploading_app.known_hosts.write_text(
        sftp_server.known_hosts_line().replace(str(sftp_server.port), str(port))
    )
    result = uploading_app.run(*uploading_app.base_args, "--retries", "2", env={"D118_SFTP_PORT": str(port)})
    assert result.returncode == 4
    line = result.stderr.strip().splitlines()[-1]
    assert f"SFTP connection to 127.0.0.1:{port} failed: connection refused; check the server is up" in line
    assert "Errno" not in result.stderr and "gave up after 2 attempts" in line


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
    server_offer = algorithms.get("mac_algs") or next(iter(algorithms.values()))
    assert "the server offers " in line and server_offer[0] in line  # and what it offers instead
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
        f"256 SHA256:abLY0m15U4q0Rj8u3jx9 [127.0.0.1]:{sftp_server.port} (ED25519)\n"  # line 5: ssh-keygen -l
        + sftp_server.known_hosts_line()  # line 6: the good one
    )
    result = uploading_app.run(*uploading_app.base_args)
    assert result.returncode == 0, result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    warnings = warnings_in(result.log)
    for number in (2, 3, 4, 5):
        assert any(f"{uploading_app.known_hosts} line {number} skipped" in w for w in warnings), (
            number,
            warnings,
        )
    assert any("line 2 skipped" in w and "@cert-authority" in w for w in warnings)
    assert any("line 5 skipped: it is a fingerprint" in w and "--show-host-key" in w for w in warnings)
    assert not any("line 6" in w or "(" in w.partition("skipped:")[2][:3] for w in warnings)  # no raw tuple
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
