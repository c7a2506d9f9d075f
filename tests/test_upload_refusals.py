"""A locked-down SFTP server: only the operations needed are sent, each refusal
names the operation and the file and is never retried, the night succeeds once
the final rename is done, and --check's verdict is the night's.

The asyncssh server here refuses one operation at a time as such servers do
("permission denied", "unsupported"); tests/test_upload_servers.py runs the
same cases against OpenSSH, ProFTPD and gesftpserver where installed."""

import os
import stat

import asyncssh
import pytest
from conftest import one_line, posix_modes, remote_names

PARTIAL = "/sftp/clever/.raceethnicity.txt.partial"
FINAL = "/sftp/clever/raceethnicity.txt"


def night(app):
    return app.run(*app.base_args)


def check(app):
    return app.run("--check", *app.base_args)


def verdicts_agree(app, night_result) -> None:
    """--check fails exactly where the night fails, with the same words."""
    checked = check(app)
    assert (checked.returncode == 0) == (night_result.returncode == 0), checked.stdout
    if night_result.returncode:
        failure = [line for line in checked.stdout.splitlines() if line.startswith("[FAIL] remote directory")]
        assert failure, checked.stdout
        words = one_line(night_result.stderr).partition("refused ")[2].partition(" ")[0]
        assert words in failure[0], (failure[0], night_result.stderr)
    return checked


@posix_modes  # the test server, on Windows, gives every file mode 666
def test_a_plain_night_sends_no_chmod_and_no_delete(uploading_app, sftp_server):
    assert night(uploading_app).returncode == 0
    assert "fsetstat" not in sftp_server.operations and "setstat" not in sftp_server.operations
    assert "remove" not in sftp_server.operations  # nothing was there to delete
    sftp_server.operations.clear()
    assert night(uploading_app).returncode == 0  # over last night's file
    assert "remove" not in sftp_server.operations
    assert remote_names(sftp_server) == ["raceethnicity.txt"]


@posix_modes
@pytest.mark.parametrize("refused", [asyncssh.SFTPOpUnsupported, asyncssh.SFTPPermissionDenied])
def test_a_refused_chmod_is_a_warning_naming_the_mode_the_file_has(uploading_app, sftp_server, refused):
    sftp_server.open_mode = 0o644  # a server that ignores OPEN's mode
    sftp_server.refuse = {"fsetstat": refused, "setstat": refused}
    result = night(uploading_app)
    assert result.returncode == 0, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("WARNING: the server refused chmod 600 on " + PARTIAL)
    assert "the file has mode 644, wider than asked" in line
    assert stat.S_IMODE(os.stat(sftp_server.remote()).st_mode) == 0o644
    checked = check(uploading_app)
    assert checked.returncode == 0 and "[WARN] the server refused chmod 600" in checked.stdout


def test_a_refused_posix_rename_falls_back_to_moving_the_old_file_aside(uploading_app, sftp_server):
    assert night(uploading_app).returncode == 0
    sftp_server.refuse = {"posix_rename": asyncssh.SFTPPermissionDenied}
    sftp_server.operations.clear()
    result = night(uploading_app)
    assert result.returncode == 0, result.stderr
    assert sftp_server.operations.count("rename") == 2  # old aside (a dot-name), new in place
    assert remote_names(sftp_server) == ["raceethnicity.txt"]
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert check(uploading_app).returncode == 0


def test_a_refused_delete_blocks_nothing_when_nothing_needs_deleting(uploading_app, sftp_server):
    sftp_server.refuse = {"remove": asyncssh.SFTPPermissionDenied}
    assert night(uploading_app).returncode == 0
    assert night(uploading_app).returncode == 0  # posix-rename replaces without a delete
    checked = check(uploading_app)
    assert checked.returncode == 0, checked.stdout
    assert "[WARN] the server refused REMOVE /sftp/clever/.clever_export_check.txt" in checked.stdout


def test_neither_replace_nor_delete_fails_once_naming_the_right_needed(uploading_app, sftp_server):
    assert night(uploading_app).returncode == 0
    yesterday = sftp_server.remote().read_bytes()
    sftp_server.refuse = {"posix_rename": asyncssh.SFTPOpUnsupported, "rename": asyncssh.SFTPPermissionDenied}
    sftp_server.connections = 0
    result = night(uploading_app)
    assert result.returncode == 4
    line = one_line(result.stderr)
    assert f"the server refused RENAME {FINAL} -> /sftp/clever/.raceethnicity.txt.previous" in line
    assert line.endswith("(permission denied): the account needs rename/delete rights in /sftp/clever/"), line
    assert "firewall" not in line and "gave up" not in line
    assert sftp_server.connections == 1  # a refusal is an answer: not retried
    assert sftp_server.remote().read_bytes() == yesterday
    assert remote_names(sftp_server) == ["raceethnicity.txt"]  # no student data left in a temporary file
    verdicts_agree(uploading_app, result)


def test_a_refused_create_names_open_and_leaves_nothing(uploading_app, sftp_server):
    sftp_server.refuse = {"open": asyncssh.SFTPPermissionDenied}
    result = night(uploading_app)
    assert result.returncode == 4
    assert f"the server refused OPEN {PARTIAL} (permission denied)" in one_line(result.stderr)
    assert remote_names(sftp_server) == []
    verdicts_agree(uploading_app, result)


def test_a_refused_cleanup_after_the_final_rename_is_a_success(uploading_app, sftp_server):
    assert night(uploading_app).returncode == 0
    sftp_server.refuse = {"posix_rename": asyncssh.SFTPOpUnsupported, "remove": asyncssh.SFTPPermissionDenied}
    result = night(uploading_app)
    assert result.returncode == 0, result.stderr
    line = one_line(result.stderr)
    assert line.startswith("WARNING: tonight's file is in place, but the server refused REMOVE")
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert remote_names(sftp_server) == [".raceethnicity.txt.previous", "raceethnicity.txt"]  # dot: unseen
    status = uploading_app.run("--status")
    assert status.returncode == 0 and "exit 0" in status.stdout
    # The next night: the leftover is in the way of the move aside, and its delete is refused.
    checked = check(uploading_app)  # the night will need to move the file aside again: check says so now
    assert checked.returncode == 4
    assert (
        "[FAIL] remote directory /sftp/clever/ writable: the server refused REMOVE /sftp/clever/.raceethnicity.txt.previous"
        in checked.stdout
    )
    again = night(uploading_app)
    assert again.returncode == 4
    line = one_line(again.stderr)
    assert "the server refused REMOVE /sftp/clever/.raceethnicity.txt.previous" in line
    assert "the temporary file /sftp/clever/.raceethnicity.txt.partial is left on the server" in line
    assert "firewall" not in again.stderr


def test_a_swap_cut_short_is_reported_by_check_and_restored_by_the_next_run(uploading_app, sftp_server):
    previous = sftp_server.remote(".raceethnicity.txt.previous")
    previous.write_bytes(b"last night\n")  # a killed run moved it aside and never came back
    checked = check(uploading_app)
    assert checked.returncode == 0
    assert f"[WARN] {FINAL} is missing after an interrupted swap; the next run puts" in checked.stdout
    result = night(uploading_app)
    assert result.returncode == 0
    assert "was missing after an interrupted swap; last night's file was put back" in result.stderr
    assert sftp_server.remote().read_bytes() == uploading_app.output.read_bytes()
    assert remote_names(sftp_server) == ["raceethnicity.txt"]
