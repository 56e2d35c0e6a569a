"""An app whose kombu keys live under a global key prefix, with its reserved messages under
renamed keys: what test_transport_options.py submits to, and what its workers run
(``celery -A tests.integration.prefixed_app worker``).

Importing this module builds nothing (the test process imports it too): ``create(settings)``
builds an app, and ``app`` — the one ``celery -A`` looks up — is built from the worker's
``VOX_FLOW_*`` environment when first used.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from vox_flow.app import create_app
from vox_flow.application import VoxFlow
from vox_flow.config import Settings, load_settings
from vox_flow.tasks import TypedTask, typed_task

PREFIX = "tenant1:"
TRANSPORT_OPTIONS = {
    "global_keyprefix": PREFIX,
    "unacked_key": "t1_unacked",
    "unacked_index_key": "t1_unacked_index",
}


class Job(BaseModel):
    id: str
    seconds: float = 0


class Done(BaseModel):
    id: str
    runs: int


@dataclass(frozen=True)
class Prefixed:
    app: VoxFlow
    work: TypedTask[Job, Done]


def starts(job_id: str) -> str:
    """The list (a vox_flow key, so not prefixed) where every start of ``job_id`` is noted."""
    return f"test:prefixed:{job_id}"


def create(settings: Settings) -> Prefixed:
    """An app on the prefixed transport, with its one task registered."""
    app = create_app(settings)
    # create_app sets visibility_timeout in these options: add to them, never replace them.
    app.conf.broker_transport_options.update(TRANSPORT_OPTIONS)

    @typed_task(app, name="prefixed.work")
    def work(job: Job) -> Done:
        """Notes its start (by the worker's pid), sleeps ``seconds``, returns its run count."""
        runs = int(app.redis.rpush(starts(job.id), os.getpid()))
        time.sleep(job.seconds)
        return Done(id=job.id, runs=runs)

    return Prefixed(app, work)


_app: VoxFlow | None = None


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        _app = create(load_settings()).app
    return _app
