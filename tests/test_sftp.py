"""Uploads against real SSH servers on loopback: asyncssh's, and OpenSSH's sshd."""

import os

import asyncssh
import paramiko
from conftest import SECRET_KEY_PASSPHRASE, SECRET_SFTP_PASSWORD, Student, remote_names


def assert_no_secret(result):
    for secret in (SECRET_SFTP_PASSWORD, SECRET_KEY_PASSPHRASE):
        assert secret not in result.everything()


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
    assert sftp_server.connections == 0 and not uploading_app.output.exists()


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
    assert result.returncode == 4 and "SFTP connection to 127.0.0.1" in result.stderr
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
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    uploading_app.known_hosts.write_text(sftp_server.known_hosts_line().replace(str(sftp_server.port), str(port)))
    result = uploading_app.run(*uploading_app.base_args, "--retries", "2", env={"D118_SFTP_PORT": str(port)})
    assert result.returncode == 4
    line = result.stderr.strip().splitlines()[-1]
    assert f"SFTP connection to 127.0.0.1:{port} failed: connection refused; check the server is up" in line
    assert "Errno" not in result.stderr and "gave up after 2 attempts" in line
