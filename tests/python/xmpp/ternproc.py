"""Starting a tern process from a config file, for the federation and component tests."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from ternclient import WAIT


@dataclass
class TernProc:
    """A running tern, as ternclient.Phone and the federation tests see it."""

    data_dir: Path
    proc: subprocess.Popen
    tcp: tuple[str, int]
    log_path: Path
    domain: str
    passwords: dict = field(default_factory=dict)
    # ternclient.Phone reads these too; these tests run MQTT over TCP only.
    tls: tuple | None = None
    ws: tuple | None = None

    @property
    def cert(self) -> Path:
        return self.data_dir / "tls" / "cert.pem"

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-n:]) or "(no log)"

    def stop(self) -> None:
        """Prints the log tail (pytest shows it for a failed test), then SIGTERM by PID,
        SIGKILL after 5 s."""
        print(f"--- tern log (tail) ---\n{self.log_tail()}")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def tern_binary() -> Path:
    """The tern binary the tests run: $TERN_BIN, else target/debug/tern."""
    repo = Path(__file__).resolve().parents[3]
    if os.environ.get("TERN_BIN"):
        return Path(os.environ["TERN_BIN"])
    path = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "debug" / "tern"
    return path if path.is_absolute() else repo / path


def start_tern(
    tmp_path: Path, user_template: Path, config: Callable[[Path], str]
) -> tuple[subprocess.Popen, dict[str, tuple[str, int]], Path, Path]:
    """Copies the users into a fresh data dir, writes config(data_dir) and starts `tern serve`.

    Returns (process, listener addresses from the ready line, log path, data dir). stdout is
    drained in the background after the ready line so tern never blocks on it.
    """
    data_dir = tmp_path / "tern-data"
    shutil.copytree(user_template, data_dir)
    cfg = tmp_path / "tern.toml"
    cfg.write_text(config(data_dir))
    log_path = tmp_path / "tern.log"
    env = dict(os.environ)
    env.setdefault("TERN_LOG", "info,tern=debug")
    env.setdefault("NO_COLOR", "1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(tern_binary()), "--config", str(cfg), "serve"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
    buf = b""
    deadline = time.monotonic() + WAIT
    while b"tern ready " not in buf or not buf.split(b"tern ready ", 1)[1].count(b"\n"):
        left = deadline - time.monotonic()
        r, _, _ = select.select([proc.stdout], [], [], max(left, 0))
        chunk = os.read(proc.stdout.fileno(), 65536) if r else b""
        if not chunk:
            proc.kill()
            proc.wait(timeout=5)
            pytest.fail(f"tern did not get ready:\n{log_path.read_text(errors='replace')[-4000:]}")
        buf += chunk
    line = buf.split(b"tern ready ", 1)[1].split(b"\n", 1)[0].decode()
    addrs = {}
    for kv in line.split():
        k, _, v = kv.partition("=")
        host, _, port = v.rpartition(":")
        if port.isdigit():
            addrs[k] = (host, int(port))

    def drain():
        try:
            while os.read(proc.stdout.fileno(), 65536):
                pass
        except (OSError, ValueError):
            pass

    threading.Thread(target=drain, daemon=True).start()
    return proc, addrs, log_path, data_dir
