"""Fixtures for the end-to-end tests: protobuf classes and a running tern.

The tests talk to a real `tern serve` over real sockets with paho-mqtt, a
client nobody on this project wrote. Everything here has a timeout: no test
may hang.
"""

from __future__ import annotations

import importlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ternclient import WAIT, phone_factory  # tests/python is on sys.path (no __init__.py)

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "schemas" / "proto"
GEN_DIR = Path(__file__).resolve().parent / "gen"  # gitignored

DOMAIN = "example.test"
PASSWORDS = {
    "alice": "alice-secret-1",
    "bob": "bob-secret-2",
    "carol": "carol-secret-3",
}



def tern_binary() -> Path:
    """$TERN_BIN, else the debug build in $CARGO_TARGET_DIR or target/."""
    if os.environ.get("TERN_BIN"):
        path = Path(os.environ["TERN_BIN"])
    else:
        path = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "debug" / "tern"
    return path if path.is_absolute() else REPO / path


# --------------------------------------------------------------------------
# protobuf classes
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pb():
    """The `tern.v1.session_pb2` module, generated from schemas/proto."""
    if GEN_DIR.exists():
        shutil.rmtree(GEN_DIR)
    GEN_DIR.mkdir(parents=True)
    rc = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={GEN_DIR}",
            "tern/v1/session.proto",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rc.returncode == 0, f"protoc failed: {rc.stderr}"
    sys.path.insert(0, str(GEN_DIR))
    try:
        return importlib.import_module("tern.v1.session_pb2")
    finally:
        sys.path.remove(str(GEN_DIR))


# --------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_tern(args: list[str], stdin: str | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(
        [str(tern_binary()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"tern {' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc.stdout


@dataclass
class Tern:
    data_dir: Path
    proc: subprocess.Popen
    tcp: tuple[str, int]
    tls: tuple[str, int]
    ws: tuple[str, int]
    metrics: tuple[str, int]
    log_path: Path
    stdout_path: Path
    # Lines tern printed on stdout before its ready line (should be none).
    stdout_before_ready: list
    domain: str = DOMAIN
    passwords: dict = field(default_factory=lambda: dict(PASSWORDS))

    @property
    def cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def log_tail(self, n: int = 60) -> str:
        """The last lines tern wrote, stderr and stdout (logs may be on either)."""
        out = []
        for path in (self.log_path, self.stdout_path):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            out.append(f"== {path.name} ==")
            out.extend(lines[-n:])
        return "\n".join(out) or "(no log)"

    def add_user(self, name: str, password: str) -> None:
        """`tern user add` against the running daemon (admin socket)."""
        _run_tern(
            ["--data-dir", str(self.data_dir), "user", "add", name, "--password-stdin"],
            stdin=password,
        )
        self.passwords[name] = password

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _parse_ready(line: str) -> dict[str, tuple[str, int]]:
    # tern ready tcp=127.0.0.1:P1 tls=127.0.0.1:P2 ws=127.0.0.1:P3
    parts = line.split()
    assert parts[:2] == ["tern", "ready"], f"unexpected ready line: {line!r}"
    out = {}
    for kv in parts[2:]:
        k, _, v = kv.partition("=")
        host, _, port = v.rpartition(":")
        out[k] = (host.strip("[]"), int(port))
    return out


@pytest.fixture(scope="session")
def user_template(tmp_path_factory) -> Path:
    """A data dir with alice, bob and carol; copied for every server.

    Creating users hashes passwords, which is slow on purpose; doing it once
    keeps each test's fresh server cheap.
    """
    binary = tern_binary()
    if not binary.exists():
        pytest.fail(f"{binary} not found: run `cargo build` first (or set TERN_BIN)")
    d = tmp_path_factory.mktemp("tern-template")
    for user, password in PASSWORDS.items():
        _run_tern(["--data-dir", str(d), "user", "add", user, "--password-stdin"], stdin=password)
    return d


@pytest.fixture
def tern(user_template, tmp_path) -> Tern:
    """A fresh tern (its own data dir, users alice/bob/carol), stopped by PID."""
    data_dir = tmp_path / "tern-data"
    shutil.copytree(user_template, data_dir)
    log_path = tmp_path / "tern.log"
    metrics = ("127.0.0.1", free_port())
    env = dict(os.environ)
    env.setdefault("TERN_LOG", "info,tern=debug")
    env.setdefault("NO_COLOR", "1")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            str(tern_binary()),
            "--data-dir",
            str(data_dir),
            "serve",
            "--domain",
            DOMAIN,
            "--mqtt-tcp",
            "127.0.0.1:0",
            "--mqtt-tls",
            "127.0.0.1:0",
            "--mqtt-ws",
            "127.0.0.1:0",
            "--metrics",
            f"{metrics[0]}:{metrics[1]}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    log.close()

    def fail(msg: str):
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        logs = ""
        for path in (log_path, tmp_path / "tern.stdout"):
            if path.exists():
                logs += f"\n--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}"
        pytest.fail(f"{msg}{logs}")

    # Wait for the ready line, with a deadline. Anything else tern prints on
    # stdout is kept (in `stdout_lines` and the log) but should not be there.
    stdout_lines: list[str] = []
    stdout_log = open(tmp_path / "tern.stdout", "wb", buffering=0)
    buf = b""
    line = None
    deadline = time.monotonic() + WAIT
    while line is None:
        left = deadline - time.monotonic()
        if left <= 0:
            fail("tern did not print its ready line in time")
        r, _, _ = select.select([proc.stdout], [], [], left)
        if not r:
            continue
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            fail(f"tern exited (rc={proc.poll()}) before it was ready")
        stdout_log.write(chunk)
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            text = raw.decode(errors="replace")
            stdout_lines.append(text)
            if text.startswith("tern ready "):
                line = text
                break
    stdout_log.flush()
    try:
        addrs = _parse_ready(line)
    except (AssertionError, ValueError) as e:
        fail(str(e))

    # Keep draining stdout so the server never blocks on a full pipe.
    def drain():
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                stdout_log.write(chunk)
                stdout_log.flush()
        except (OSError, ValueError):
            pass
        finally:
            stdout_log.close()

    threading.Thread(target=drain, daemon=True).start()

    server = Tern(
        data_dir=data_dir,
        proc=proc,
        tcp=addrs["tcp"],
        tls=addrs["tls"],
        ws=addrs["ws"],
        metrics=metrics,
        log_path=log_path,
        stdout_path=tmp_path / "tern.stdout",
        stdout_before_ready=stdout_lines[:-1],
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the server log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        server = item.funcargs.get("tern") if hasattr(item, "funcargs") else None
        if isinstance(server, Tern):
            rep.sections.append(("tern log (tail)", server.log_tail()))


@pytest.fixture
def phones(pb, tern):
    """Factory for Phone objects; every one is disconnected at the end."""
    with phone_factory(pb, tern) as make:
        yield make


@pytest.fixture(autouse=True)
def _deadline():
    """Hard cap per test: no wait here should come near it, but nothing may hang."""
    def expired(signum, frame):
        raise TimeoutError("test exceeded 60 s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
