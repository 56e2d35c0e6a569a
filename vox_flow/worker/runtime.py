"""What this process is running right now: the idempotency claims it holds, renewed while alive."""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

from vox_flow.idempotency import IdempotencyStore

if TYPE_CHECKING:
    from collections.abc import Iterator

    from vox_flow.application import VoxFlow

_held: dict[str, str] = {}  # idempotency key -> token of the run holding its claim
_lock = threading.Lock()
_keeper_pid = 0


def _renew_forever(app: VoxFlow) -> None:
    store = IdempotencyStore(app.redis, app.settings.idempotency_ttl_seconds)
    stop = threading.Event()
    while not stop.wait(app.settings.lease_renew_seconds):
        with _lock:
            held = dict(_held)
        try:
            store.renew(held, app.settings.lease_seconds)
        except Exception:
            continue


def _ensure_keeper(app: VoxFlow) -> None:
    global _keeper_pid
    if _keeper_pid == os.getpid():
        return
    _keeper_pid = os.getpid()  # a forked child needs its own thread
    threading.Thread(target=_renew_forever, args=(app,), name="vf-claims", daemon=True).start()


@contextmanager
def running(app: VoxFlow, key: str | None, token: str) -> Iterator[None]:
    """While inside, the claim ``key`` (if any) held by run ``token`` is kept alive."""
    if key is None:
        yield
        return
    _ensure_keeper(app)
    with _lock:
        _held[key] = token
    try:
        yield
    finally:
        with _lock:
            _held.pop(key, None)
