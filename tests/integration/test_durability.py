"""A broker killed with SIGKILL and restarted loses no submit that returned.

Submits run in a thread while the server is killed mid-stream; after a restart on the same
AOF and port, every task id whose submit returned must have its message in the queue. (A
submit the kill interrupted raised, so it promised nothing; a message may be there twice.)

What a process kill proves is that the server wrote the AOF before it acknowledged; what it
cannot prove is the fsync (a lost machine, not a lost process) — see docs/operations.md.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from pydantic import BaseModel

from vox_flow.app import create_app
from vox_flow.broker.server import Fsync, RedisServer, embedded_binary, find_binary
from vox_flow.config import Settings
from vox_flow.tasks import typed_task


class Note(BaseModel):
    n: int


CASES = [
    # (id, binary, appendfsync, durable_submit)
    ("system-always", find_binary(prefer_system=True), "always", "none"),
    ("valkey-everysec-waitaof", embedded_binary(), "everysec", "waitaof"),
    ("valkey-always", embedded_binary(), "always", "none"),  # `vox-flow dev`'s default
]


@pytest.mark.parametrize(("name", "binary", "fsync", "durable"), CASES, ids=[c[0] for c in CASES])
def test_no_returned_submit_is_lost_when_the_broker_is_killed(
    tmp_path: Path, name: str, binary: str, fsync: Fsync, durable: str
) -> None:
    server = RedisServer(tmp_path / "broker", binary=binary, appendfsync=fsync)
    server.start()
    try:
        app = create_app(Settings(broker_url=server.url, durable_submit=durable))  # type: ignore[arg-type]

        # One name per case: Celery shares task names between apps of one process.
        @typed_task(app, name=f"test.durability.{name}")
        def note(item: Note) -> Note:
            return item

        returned: list[str] = []
        failed: list[BaseException] = []

        def submitter() -> None:
            n = 0
            while True:
                try:
                    handle = note.submit({"n": n})
                except Exception as exc:  # the kill: this submit promised nothing
                    failed.append(exc)
                    return
                returned.append(handle.id)
                n += 1

        thread = threading.Thread(target=submitter)
        thread.start()
        deadline = time.monotonic() + 30
        while len(returned) < 200 and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop(signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive()
        assert failed, "the submitter should have seen the broker die"
        assert len(returned) >= 200

        server.start()  # same data dir and port: the AOF is reloaded
        client = redis.Redis.from_url(server.url)
        try:
            queued = {json.loads(raw)["headers"]["id"] for raw in client.lrange(note.queue, 0, -1)}
        finally:
            client.close()
        lost = [task_id for task_id in returned if task_id not in queued]
        assert not lost, f"{len(lost)} of {len(returned)} returned submits lost"
        app.redis.close()
    finally:
        server.stop()
