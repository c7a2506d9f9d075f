"""The file: UTF-8 without BOM, LF, tabs, no header, atomic replacement."""

import os

import pytest
from conftest import NO_ROW, Student, posix_fifo, posix_modes
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
