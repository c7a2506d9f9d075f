"""Fixtures: PowerSchool-shaped SQLite databases, a copy of the script to run
as districts do, and real SSH servers on loopback (asyncssh, OpenSSH sshd)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import http.server
import io
import locale
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import asyncssh
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import clever_export  # noqa: E402

SECRET_DB_PASSWORD = "Db-pa55word-never-printed"
SECRET_SFTP_PASSWORD = "Sftp-pa55word-never-printed"
SECRET_KEY_PASSPHRASE = "Key-passphrase-never-printed"
NO_ROW = object()  # "this student has no row in that extension table"
EXAMPLES = REPO / "examples"
ORACLE_ENV = {"POWERSCHOOL_READ_USER": "psnavigator", "POWERSCHOOL_DB_PASSWORD": SECRET_DB_PASSWORD}

# What cannot be tested on Windows (.ci/windows runs the suite there): skipped with the reason.
WINDOWS = os.name == "nt"
posix_modes = pytest.mark.skipif(WINDOWS, reason="POSIX mode bits: Windows uses ACLs")
posix_fifo = pytest.mark.skipif(WINDOWS, reason="named pipes (os.mkfifo) are POSIX")
posix_signals = pytest.mark.skipif(WINDOWS, reason="POSIX signals: Windows has TerminateProcess only")
posix_paths = pytest.mark.skipif(
    WINDOWS, reason="POSIX paths (/proc, /dev/null, //x) are other files on Windows"
)
posix_symlinks = pytest.mark.skipif(WINDOWS, reason="symlinks need a privilege on Windows (Wine makes none)")


def pytest_xdist_auto_num_workers(config) -> int:
    """-n auto: one worker more than cores, since many tests wait on a server or a timeout."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores + 1


# --- Shared checks ----------------------------------------------------------------


def one_line(stderr: str) -> str:
    """The one line an admin reads on stderr: exactly one, no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def remote_names(server) -> list[str]:
    """What is in a test SFTP server's remote directory."""
    return sorted(os.listdir(server.remote().parent))


def run_main(tmp_path: Path, *args: str, environ: dict[str, str] | None = None) -> int:
    """clever_export.main in this process, with every file it keeps in tmp_path."""
    return clever_export.main(
        [*args, "--log-file", str(tmp_path / "run.log"), "--state-file", str(tmp_path / "state.json")]
        + ([] if "--output" in args else ["--output", str(tmp_path / "out.txt")]),
        environ={} if environ is None else environ,
    )


# --- PowerSchool-shaped databases ---------------------------------------------


@dataclasses.dataclass
class Student:
    number: Any
    first: str = "Pat"
    last: str = "Doe"
    enroll: int = 0
    fedethnicity: Any = 0
    fer: Any = 16  # one value, a list (several rows) or NO_ROW
    lep: Any = 0  # likewise
    races: tuple = ()  # STUDENTRACE.RACECD rows
    current: tuple | None = None  # (custom_ethnicity, custom_race, custom_lep) or no row


def powerschool_schema() -> str:
    """The tables of the demo seed file: one schema for demo and tests."""
    seed = (REPO / clever_export.DEMO_SEED_FILE).read_text(encoding="utf-8")
    return seed[: seed.index("INSERT INTO")]


def make_db(path: Path, students: list[Student]) -> Path:
    connection = sqlite3.connect(path)
    connection.executescript(powerschool_schema())
    for position, student in enumerate(students, 1):
        dcid, student_id = 10_000 + position, 20_000 + position
        connection.execute(
            "INSERT INTO students VALUES (?, ?, ?, ?, ?, ?, ?)",
            (student_id, dcid, student.number, student.first, student.last,
             student.enroll, student.fedethnicity),
        )  # fmt: skip
        for table, column_value in (("s_il_stu_demographics_x", student.fer), ("s_il_stu_x", student.lep)):
            if column_value is NO_ROW:
                continue
            for value in column_value if isinstance(column_value, list) else [column_value]:
                connection.execute(f"INSERT INTO {table} VALUES (?, ?)", (dcid, value))
        for race in student.races:
            connection.execute("INSERT INTO studentrace VALUES (?, ?)", (student_id, race))
        if student.current is not None:
            connection.execute(
                "INSERT INTO u_def_ext_students0 VALUES (?, ?, ?, ?)", (dcid, *student.current)
            )
    connection.commit()
    connection.close()
    return path


def many_students(count: int, first_number: int = 100_000) -> list[Student]:
    """A deterministic mix of every code, for size-dependent tests."""
    fers = [16, 16, 16, 14, 13, 11, 17, 12, 15, None]
    return [
        Student(first_number + i, first=f"First{i}", last=f"Last{i}",
                fedethnicity=1 if fers[i % 10] == 11 else 0, fer=fers[i % 10], lep=i % 7 == 0)
        for i in range(count)
    ]  # fmt: skip


@pytest.fixture
def db(tmp_path):
    """make_db bound to a fresh folder: db(students) -> path."""
    counter = iter(range(1000))
    return lambda students: make_db(tmp_path / f"powerschool{next(counter)}.sqlite", students)


# --- The script, copied into a folder as a district deploys it ---------------


@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    log: str
    seconds: float

    def everything(self) -> str:
        return self.stdout + self.stderr + self.log


class App:
    """clever_export.py and demo/ in their own folder, as an admin deploys them.

    run() calls main() in this process, with the script's folder moved to root and
    stdout/stderr captured as the interpreter would print them (a thread's traceback
    and a warning included): fast enough to run every scenario. A run that needs the
    real interpreter (its own streams, start-up, signals, a working directory) is a
    subprocess: start(), run(cwd=...), or App(..., process=True) for a whole test.
    """

    def __init__(self, root: Path, process: bool = False):
        self.root = root
        self.process = process
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / "clever_export.py", root / "clever_export.py")
        shutil.copytree(REPO / "demo", root / "demo")
        shutil.copy2(REPO / "known_hosts", root / "known_hosts")
        self.env: dict[str, str] = {}

    @property
    def output(self) -> Path:
        return self.root / "raceethnicity.txt"

    @property
    def log_path(self) -> Path:
        return self.root / "clever_export.log"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def command(self, *args: str) -> list[str]:
        return [sys.executable, str(self.root / "clever_export.py"), *args]

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("POWERSCHOOL_", "D118_"))}
        return {**base, **self.env, **(extra or {})}

    def start(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
        for attempt in (1, 2):
            try:
                return subprocess.Popen(
                    self.command(*args), env=self.environment(env), cwd=cwd or self.root,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                )  # fmt: skip
            except OSError as error:
                # Wine's CreateProcess now and then fails with ERROR_INTERNAL_ERROR (1359)
                # under load, before the script exists as a process: one more try, for that alone.
                if getattr(error, "winerror", None) != 1359 or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def run(self, *args: str, env=None, cwd=None, timeout: float = 90) -> Result:
        """One run to its end. In this process, a hung run is cut by pytest-timeout."""
        log_before = len(self.log())
        started = time.monotonic()
        if self.process or cwd is not None or not set({**self.env, **(env or {})}) <= MAIN_READS:
            process = self.start(*args, env=env, cwd=cwd)
            stdout, stderr = process.communicate(timeout=timeout)
            code = process.returncode
        else:
            code, stdout, stderr = self.run_main(list(args), self.environment(env))
        return Result(code, stdout, stderr, self.log()[log_before:], time.monotonic() - started)

    def run_main(self, argv: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
        stdout, stderr = interpreter_streams(environ)
        root_logger = logging.getLogger()
        saved = (clever_export.SCRIPT_DIR, threading.excepthook, root_logger.handlers, root_logger.level)
        try:
            clever_export.SCRIPT_DIR = self.root
            # What the interpreter prints to stderr on its own, printed here too: a thread's
            # traceback, a warning, a library's log record at WARNING (logging's last resort).
            threading.excepthook = threading.__excepthook__
            root_logger.handlers, root_logger.level = [], logging.WARNING
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(stdout),
                contextlib.redirect_stderr(stderr),
            ):
                interpreter_warning_filters()
                code = clever_export.main(argv, environ=environ)
        finally:
            clever_export.SCRIPT_DIR, threading.excepthook, root_logger.handlers, root_logger.level = saved
        return code, *(stream.buffer.getvalue().decode(stream.encoding) for stream in (stdout, stderr))


# The settings main() reads from its environ argument. Any other variable (HOME, TZ,
# LANG, a proxy) acts on the interpreter or a library, so a run given one is a subprocess.
MAIN_READS = {*clever_export.SETTING_NAMES, "PYTHONIOENCODING", "CREDENTIALS_DIRECTORY"}


def interpreter_streams(environ: dict[str, str]) -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
    """stdout and stderr as Python opens them for a pipe: the encoding PYTHONIOENCODING
    or the locale gives, strict on stdout, backslashreplace on stderr."""
    encoding, _, errors = environ.get("PYTHONIOENCODING", "").partition(":")
    encoding = encoding or locale.getpreferredencoding(False)
    return (
        io.TextIOWrapper(
            io.BytesIO(), encoding=encoding, errors=errors or "strict", newline="\n", write_through=True
        ),
        io.TextIOWrapper(
            io.BytesIO(), encoding=encoding, errors="backslashreplace", newline="\n", write_through=True
        ),
    )


def interpreter_warning_filters() -> None:
    """Python's default warning filters (pytest's own would hide what cron mail shows)."""
    warnings.resetwarnings()
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="clever_export")
    warnings.filterwarnings("default", append=True)
    warnings.showwarning = print_warning  # pytest's records it; the interpreter prints it


def print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture
def app(tmp_path, request) -> App:
    """A deployed copy; tests marked own_process run it as a subprocess every time."""
    return App(tmp_path / "deploy", process=request.node.get_closest_marker("own_process") is not None)


# --- asyncssh SFTP server on loopback -------------------------------------------


class SftpServer:
    """A real SFTP server in a background thread, with faults on demand.

    cut_connections: connection numbers (1 = first) whose upload is cut after
    cut_after_bytes have been written; "all" cuts every one.
    auth_gate: when set to an Event, logins wait for it (to hold a run open).
    posix_rename: False makes the server refuse posix-rename@openssh.com, as
    some SFTP servers do, leaving only SFTPv3's rename (which will not replace).
    fail_writes_after: once a connection has written more than this many bytes,
    each further write is answered with SFTP Failure ("disk full"); with
    refuse_once, only the first such write is (a quota that frees up).
    algorithms: kex_algs=, encryption_algs=, mac_algs= handed to create_server.
    refuse: SFTP operation name (open, write, fsetstat, setstat, remove, rename,
    posix_rename, close) -> the asyncssh error it answers with, as a locked-down
    server would ("permission denied", "unsupported").
    open_mode: the mode the server gives a new file whatever the client asks
    (servers that ignore OPEN's attributes); None honours the request.
    signal_at: (operation, n): when the n-th such operation arrives, send
    signal_number to signal_pid (the client run) before answering it.
    slow: rename or posix_rename -> seconds the server waits after doing it, before answering.
    """

    username = "clever"
    password = SECRET_SFTP_PASSWORD
    remote_dir = "/sftp/clever/"

    def __init__(
        self, workdir: Path, fail_writes_after: int | None = None, refuse_once: bool = False, **algorithms
    ):
        self.workdir = workdir
        self.root = workdir / "sftp-root"
        (self.root / "sftp" / "clever").mkdir(parents=True)
        self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.key_file = workdir / "client_ed25519"
        # Few bcrypt rounds: the passphrase is tested, not the key derivation's cost.
        self.key_file.write_bytes(
            self.client_key.export_private_key("openssh", SECRET_KEY_PASSPHRASE, rounds=50)
        )
        self.key_file.chmod(0o600)  # OpenSSH, and the script, refuse a key others can read
        self.connections = 0
        self.cut_connections: set[int] | str = set()
        self.cut_after_bytes = 40_000
        self.auth_gate: threading.Event | None = None
        self.posix_rename = True
        self.fail_writes_after = fail_writes_after
        self.refuse_once = refuse_once
        self.refused_writes = 0
        self.auth_waiting = threading.Event()
        self.refuse: dict[str, type] = {}
        self.open_mode: int | None = None
        self.signal_at: tuple[str, int] | None = None
        self.signal_pid: int | None = None
        self.signal_number = signal.SIGTERM
        self.operations: list[str] = []
        self.slow: dict[str, float] = {}  # operation -> seconds before its answer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.acceptor = asyncio.run_coroutine_threadsafe(self._start(algorithms), self.loop).result(10)
        self.port = self.acceptor.sockets[0].getsockname()[1]

    async def _start(self, algorithms):
        fixture = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn):
                fixture.connections += 1
                self.number = fixture.connections

            def begin_auth(self, username):
                return True

            def password_auth_supported(self):
                return True

            async def validate_password(self, username, password):
                if fixture.auth_gate is not None:
                    fixture.auth_waiting.set()
                    await asyncio.get_running_loop().run_in_executor(None, fixture.auth_gate.wait, 30)
                return username == fixture.username and password == fixture.password

        def hooked(name):
            """The operation as a locked-down server, or a signalling test, answers it."""
            fixture.operations.append(name)
            if fixture.signal_at is not None and fixture.signal_pid is not None:
                operation, nth = fixture.signal_at
                if operation == name and fixture.operations.count(name) == nth:
                    os.kill(fixture.signal_pid, fixture.signal_number)
            if name in fixture.refuse:
                raise fixture.refuse[name](f"{name} refused by the test server")

        class FaultySftp(asyncssh.SFTPServer):
            def __init__(self, chan):
                super().__init__(chan, chroot=str(fixture.root))
                self.written = 0
                self.number = chan.get_connection().get_owner().number

            def open(self, path, pflags, attrs):
                hooked("open")
                if fixture.open_mode is not None:
                    attrs.permissions = fixture.open_mode
                return super().open(path, pflags, attrs)

            def close(self, file_obj):
                hooked("close")
                return super().close(file_obj)

            def fsetstat(self, file_obj, attrs):
                hooked("fsetstat")
                return super().fsetstat(file_obj, attrs)

            def setstat(self, path, attrs):
                hooked("setstat")
                return super().setstat(path, attrs)

            def remove(self, path):
                hooked("remove")
                return super().remove(path)

            def rename(self, oldpath, newpath):
                hooked("rename")
                done = super().rename(oldpath, newpath)
                time.sleep(fixture.slow.get("rename", 0))  # done, then answered late (the server waits)
                return done

            def write(self, file_obj, offset, data):
                hooked("write")
                if fixture.fail_writes_after is not None:
                    if self.written + len(data) > fixture.fail_writes_after and not (
                        fixture.refuse_once and fixture.refused_writes
                    ):
                        fixture.refused_writes += 1
                        raise asyncssh.SFTPFailure("disk full")
                    self.written += len(data)
                    return super().write(file_obj, offset, data)
                cut = fixture.cut_connections
                if cut == "all" or self.number in cut:
                    self.written += len(data)
                    if self.written > fixture.cut_after_bytes:
                        self.connection.abort()
                        return
                return super().write(file_obj, offset, data)

            def posix_rename(self, oldpath, newpath):
                hooked("posix_rename")
                if not fixture.posix_rename:
                    raise asyncssh.SFTPOpUnsupported("posix-rename not supported")
                if fixture.slow.get("posix_rename"):
                    done = super().posix_rename(oldpath, newpath)
                    time.sleep(fixture.slow["posix_rename"])  # done, then answered late
                    return done
                return super().posix_rename(oldpath, newpath)

        return await asyncssh.create_server(
            Server, "127.0.0.1", 0,
            server_host_keys=[self.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(
                self.client_key.export_public_key().decode()),
            sftp_factory=FaultySftp,
            **algorithms,
        )  # fmt: skip

    def known_hosts_line(self, key=None) -> str:
        public = (key or self.host_key).export_public_key().decode().strip()
        return f"[127.0.0.1]:{self.port} {public}\n"

    def remote(self, name: str = "raceethnicity.txt") -> Path:
        return self.root / "sftp" / "clever" / name

    def env(self, **extra: str) -> dict[str, str]:
        """The SFTP variables that log in to this server with its password."""
        return {
            "D118_SFTP_ADDRESS": "127.0.0.1",
            "D118_SFTP_PORT": str(self.port),
            "D118_SFTP_USERNAME": self.username,
            "D118_SFTP_PASSWORD": self.password,
            **extra,
        }

    def stop(self) -> None:
        if self.auth_gate is not None:
            self.auth_gate.set()
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    async def _shutdown(self) -> None:
        self.acceptor.close()
        await self.acceptor.wait_closed()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


@pytest.fixture
def sftp_server(tmp_path):
    server = SftpServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def fault_server(tmp_path):
    """fault_server(**options) -> a started SftpServer with those faults, stopped after the test."""
    servers: list[SftpServer] = []

    def start(**options) -> SftpServer:
        workdir = tmp_path / f"fault-server-{len(servers)}"
        workdir.mkdir()
        servers.append(SftpServer(workdir, **options))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def uploading_app(app, sftp_server, db):
    """A deployed script that trusts the fixture server and reads a small database."""
    app.known_hosts.write_text(sftp_server.known_hosts_line())
    app.env = {**sftp_server.env(), "PYTHONIOENCODING": "utf-8"}
    app.db_path = db([Student(1001 + i, fer=16) for i in range(10)])
    app.base_args = ("--sqlite", str(app.db_path), "--timeout", "5", "--retry-wait", "0.05")
    return app


# --- Other loopback peers ------------------------------------------------------


class SlowPeer:
    """A TCP server on loopback that accepts, sends `opening`, then `line` every
    TRICKLE_SECONDS for as long as the client stays (a tarpit, an overloaded relay):
    each read of the client's gets an answer, so only a wall-clock deadline ends
    the wait.  With no line it never says a word after the opening."""

    TRICKLE_SECONDS = 2.0

    def __init__(self, opening: bytes = b"", line: bytes | None = None):
        self.opening, self.line = opening, line
        self.accepted = threading.Event()  # a client is waiting on this peer now
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection = self._listener.accept()[0]
            except OSError:
                continue
            self._held.append(connection)
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()
            self.accepted.set()

    def _answer(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.sendall(self.opening)
            while self.line is not None and not self._stop.wait(self.TRICKLE_SECONDS):
                connection.sendall(self.line)

    def close(self) -> None:
        self._stop.set()
        for connection in self._held:
            connection.close()
        self._listener.close()


@pytest.fixture
def slow_peer():
    """slow_peer(opening, line) -> a SlowPeer, closed after the test."""
    peers: list[SlowPeer] = []

    def start(opening: bytes = b"", line: bytes | None = None) -> SlowPeer:
        peers.append(SlowPeer(opening, line))
        return peers[-1]

    yield start
    for peer in peers:
        peer.close()


class CuttingProxy:
    """A TCP relay to a real server on loopback that cuts the connection once the
    client has sent `cut_after` bytes: a link lost mid-upload, whatever the server."""

    def __init__(self, port: int, cut_after: int):
        self.server_port, self.cut_after = port, cut_after
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.cut = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client = self._listener.accept()[0]
                server = socket.create_connection(("127.0.0.1", self.server_port))
                threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, counted: bool) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sent += len(data) if counted else 0
                if sent > self.cut_after:
                    self.cut.set()
                    break
                target.sendall(data)
        for end in (source, target):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self._listener.close()


# What each kind of service sends when it trickles: a line at a time, never done.
TRICKLE_SMTP = (b"", b"220-slow relay\r\n")  # an SMTP greeting that never ends
TRICKLE_HTTP = (b"HTTP/1.1 200 OK\r\n", b"X-Slow: 1\r\n")  # headers that never end
TRICKLE_SSH = (b"", b"not yet\r\n")  # lines before the SSH banner, which never comes


@pytest.fixture
def silent_listener(slow_peer):
    """A TCP port that accepts connections and never says a word."""
    return slow_peer().port


@pytest.fixture
def ping_server():
    """Records Healthchecks-style pings: list of (path, body)."""
    pings: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            pings.append((self.path, self.rfile.read(length).decode("utf-8")))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def do_GET(self):  # a heartbeat URL (Uptime Kuma, Cronitor) is fetched as given
            pings.append((f"GET {self.path}", ""))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.pings = pings
    server.url = f"http://127.0.0.1:{server.server_address[1]}/ping/abc"
    yield server
    server.shutdown()
    server.server_close()


# --- OpenSSH sshd on loopback, where installed -----------------------------------

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


@dataclasses.dataclass
class OpenSsh:
    port: int
    key_file: Path
    remote_dir: Path
    known_hosts_line: str
    user: str

    def env(self, **extra: str) -> dict[str, str]:
        """The SFTP variables that log in to this server with its passphrase-protected key."""
        return {"D118_SFTP_ADDRESS": "127.0.0.1", "D118_SFTP_PORT": str(self.port),
                "D118_SFTP_USERNAME": self.user, "D118_SFTP_KEY_FILE": str(self.key_file),
                "D118_SFTP_KEY_PASSPHRASE": SECRET_KEY_PASSPHRASE, **extra}  # fmt: skip


@pytest.fixture
def openssh_server(tmp_path):
    """OpenSSH's sshd with key login; skipped where sshd is not installed."""
    yield from start_openssh(tmp_path)


@pytest.fixture
def chatty_openssh_server(tmp_path):
    """OpenSSH whose login prints a line before the SFTP server starts, as a
    .bashrc that echoes for non-interactive logins does."""
    sftp_server_binary = next((path for path in ("/usr/lib/openssh/sftp-server", "/usr/libexec/sftp-server")
                               if os.path.exists(path)), None)  # fmt: skip
    if sftp_server_binary is None:
        pytest.skip("OpenSSH's sftp-server is not installed (.ci/run installs openssh-server)")
    yield from start_openssh(
        tmp_path, f"ForceCommand echo 'Welcome to the district SFTP server'; exec {sftp_server_binary}\n"
    )


def start_openssh(tmp_path, extra_config: str = ""):
    if sys.platform == "win32":
        pytest.skip("needs a Linux OpenSSH server (sshd, /run/sshd, UsePAM)")
    if SSHD is None:
        pytest.skip("OpenSSH sshd is not installed (.ci/run installs openssh-server)")
    workdir = tmp_path / "openssh"
    workdir.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / "host_key")], check=True
    )
    client_key = workdir / "client_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", SECRET_KEY_PASSPHRASE, "-f", str(client_key)], check=True
    )
    (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
    remote_dir = workdir / "incoming"
    remote_dir.mkdir()
    port = _free_port()
    (workdir / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {workdir / 'host_key'}\n"
        f"PidFile {workdir / 'sshd.pid'}\nAuthorizedKeysFile {workdir / 'authorized_keys'}\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "Subsystem sftp internal-sftp\n" + extra_config
    )
    process = serve([SSHD, "-D", "-e", "-f", str(workdir / "sshd_config")], port, workdir / "sshd.log")
    host_public = (workdir / "host_key.pub").read_text().split()[:2]
    user = getpass.getuser()
    yield OpenSsh(port, client_key, remote_dir, f"[127.0.0.1]:{port} {' '.join(host_public)}\n", user)
    process.terminate()
    process.wait(10)


def serve(command: list[str], port: int, log: Path) -> subprocess.Popen:
    """A server started in the foreground (stderr to `log`), once 127.0.0.1:port accepts."""
    if command[0] == SSHD and os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    with open(log, "w") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"{Path(command[0]).name} did not start: {log.read_text()}")
            time.sleep(0.05)


SFTP_TEST_USER = "clever-sftp-test"


@dataclasses.dataclass
class SftpAccount:
    """The account real SFTP servers log in (tests/test_upload_servers.py): as root,
    a system user, so that sshd can chroot it and ProFTPD switch to it; otherwise
    whoever runs the tests.  `base` is root-owned and not group- or other-writable
    up to / when root, as sshd's ChrootDirectory requires."""

    user: str
    base: Path
    key_file: Path  # ed25519, no passphrase: one login costs no key derivation
    public_key: str

    @property
    def is_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def group(self) -> str:
        import grp
        import pwd

        return grp.getgrgid(pwd.getpwnam(self.user).pw_gid).gr_name

    def own(self, path: Path) -> Path:
        """`path` made a folder the account owns (its remote directory)."""
        path.mkdir(parents=True, exist_ok=True)
        if self.is_root:
            shutil.chown(path, self.user, self.group)
        return path


@pytest.fixture(scope="session")
def sftp_account(tmp_path_factory):
    if sys.platform == "win32":
        pytest.skip("the real SFTP servers (sshd, ProFTPD, gesftpserver) are not tested on Windows")
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (.ci/run installs openssh-server)")
    keys = tmp_path_factory.mktemp("sftp-account")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id")], check=True)
    public_key = (keys / "id.pub").read_text()
    if os.geteuid() != 0:
        yield SftpAccount(getpass.getuser(), tmp_path_factory.mktemp("sftp-servers"), keys / "id", public_key)
        return
    if subprocess.run(["id", SFTP_TEST_USER], capture_output=True).returncode != 0:
        if shutil.which("useradd") is None:
            pytest.skip(f"useradd is not installed: no account {SFTP_TEST_USER} for the SFTP servers")
        # Not locked (sshd without PAM refuses a "!" password), with a shell (sshd runs subsystems with it).
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/bin/sh", "--password", "*", SFTP_TEST_USER],
            capture_output=True,
        )  # fmt: skip
        subprocess.run(["id", SFTP_TEST_USER], check=True, capture_output=True)
    base = Path(tempfile.mkdtemp(prefix="clever-export-sftp-", dir="/run"))
    base.chmod(0o755)
    yield SftpAccount(SFTP_TEST_USER, base, keys / "id", public_key)
    shutil.rmtree(base, ignore_errors=True)


# --- A real SMTP server on loopback (aiosmtpd): STARTTLS and login required ------


@pytest.fixture
def smtp_server(tmp_path):
    """Receives mail over STARTTLS with a login; .messages holds each message's text."""
    import datetime
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "smtp.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "smtp.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "smtp.crt", tmp_path / "smtp.key")
    messages: list[str] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            messages.append(envelope.content.decode("utf-8", "replace"))
            return "250 OK"

    def authenticate(server, session, envelope, mechanism, auth_data):
        good = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == b"alerts"
            and auth_data.password == SMTP_PASSWORD.encode()
        )
        return AuthResult(success=good)

    port = _free_port()
    controller = Controller(
        Handler(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
        authenticator=authenticate, auth_required=True, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    controller.messages = messages
    controller.url = (
        f"mailtos://alerts:{SMTP_PASSWORD}@127.0.0.1:{port}?smtp=127.0.0.1&mode=starttls&verify=no"
        "&from=clever@district.example&to=it@district.example"
    )
    yield controller
    controller.stop()


SMTP_PASSWORD = "Smtp-pa55word-never-printed"


# --- Helpers shared by the failure tests -------------------------------------------


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
