"""The version gate, and the parts of Celery's API vox_flow's ``_celery`` overrides.

``problems`` is pure (versions and sources in, complaints out); ``check_transport`` reads this
install. The Request tests pin what ``LostRunRequest`` relies on in Celery's worker request.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Celery, Task
from celery import exceptions as celery_exceptions
from celery.worker.request import Request
from kombu import Connection, Queue
from kombu.message import Message
from kombu.transport import redis as kombu_redis

from vox_flow._celery.request import LostRun, LostRunRequest
from vox_flow._celery.versions import HOOKED, IncompatibleCelery, check_transport, problems
from vox_flow.app import create_app
from vox_flow.config import Settings

# kombu 5.6's Channel._put and _put_fanout, verbatim: **kwargs swallows _publish_batch, and
# the message is sent.
OLD_PUT = '''
    def _put(self, queue, message, **kwargs):
        """Deliver message."""
        pri = self._get_message_priority(message, reverse=False)

        with self.conn_or_acquire() as client:
            client.lpush(self._q_for_pri(queue, pri), dumps(message))
'''
OLD_PUT_FANOUT = '''
    def _put_fanout(self, exchange, message, routing_key, **kwargs):
        """Deliver fanout message."""
        with self.conn_or_acquire() as client:
            client.publish(
                self._get_publish_topic(exchange, routing_key),
                dumps(message),
            )
'''
INSTALLED = {name: inspect.getsource(getattr(kombu_redis.Channel, name)) for name in HOOKED}


@pytest.fixture
def fresh_gate() -> Iterator[None]:
    """check_transport remembers its verdict: forget it before and after the test."""
    check_transport.cache_clear()
    yield
    check_transport.cache_clear()


def test_this_install_passes_the_gate(fresh_gate: None) -> None:
    assert set(HOOKED) == {"_put", "_put_fanout"}
    assert problems(metadata.version("kombu"), metadata.version("celery"), INSTALLED) == []
    check_transport()


@pytest.mark.parametrize(
    ("kombu", "celery", "complaint"),
    [
        ("5.6.3", "5.7.0", "kombu 5.6.3 is installed; vox_flow needs kombu>=5.7,<5.8"),
        ("5.8.0", "5.7.0", "kombu 5.8.0 is installed"),
        ("5.7.0", "5.6.2", "celery 5.6.2 is installed; vox_flow needs celery>=5.7,<5.8"),
        ("5.7.0", "5.8.0rc1", "celery 5.8.0rc1 is installed"),
    ],
)
def test_versions_outside_the_range_are_refused(kombu: str, celery: str, complaint: str) -> None:
    [found] = problems(kombu, celery, INSTALLED)
    assert found.startswith(complaint)


@pytest.mark.parametrize(
    ("sources", "named"),
    [
        ({**INSTALLED, "_put": OLD_PUT}, "Channel._put "),
        ({**INSTALLED, "_put_fanout": OLD_PUT_FANOUT}, "Channel._put_fanout "),
        ({"_put": OLD_PUT, "_put_fanout": OLD_PUT_FANOUT}, "Channel._put, Channel._put_fanout "),
        ({}, "Channel._put, Channel._put_fanout "),
    ],
)
def test_a_transport_without_the_publish_batch_hook_is_refused(
    sources: dict[str, str], named: str
) -> None:
    """Even at an accepted version number: the hook is what keeps a submit atomic."""
    [complaint] = problems("5.7.0", "5.7.0", sources)
    assert f"no publish-batch hook in {named}" in complaint


def test_create_app_refuses_an_incompatible_install(
    fresh_gate: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "5.6.3" if name == "kombu" else real(name)
    )
    with pytest.raises(IncompatibleCelery) as err:
        create_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    assert "kombu 5.6.3 is installed" in str(err.value)
    assert "pip install 'celery>=5.7,<5.8' 'kombu>=5.7,<5.8'" in str(err.value)


def test_create_app_refuses_a_kombu_whose_put_ignores_the_hook(
    fresh_gate: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = inspect.getsource
    monkeypatch.setattr(
        inspect, "getsource", lambda method: OLD_PUT if method.__name__ == "_put" else real(method)
    )
    with pytest.raises(IncompatibleCelery, match=r"kombu 5\.7\.\d+'s Redis transport has no"):
        create_app(Settings(broker_url="redis://127.0.0.1:1/0"))


# What LostRunRequest relies on in celery.worker.request.Request.


def _parameters(method: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


def _info(exc: BaseException) -> ExceptionInfo:
    """What Celery's pool reports for a run that raised ``exc``."""
    try:
        raise exc
    except BaseException:
        return ExceptionInfo()


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("on_failure", ["self", "exc_info", "send_failed_event", "return_ok"]),
        ("on_timeout", ["self", "soft", "timeout"]),
        ("acknowledge", ["self"]),
    ],
)
def test_request_methods_have_the_signatures_lost_run_request_uses(
    method: str, expected: list[str]
) -> None:
    celery_params = _parameters(getattr(Request, method))
    assert [name for name, _, _ in celery_params] == expected
    if method in vars(LostRunRequest):  # an override: same parameters, kinds and defaults
        assert _parameters(getattr(LostRunRequest, method)) == celery_params


def test_lost_run_errors_are_the_ones_celery_reports() -> None:
    """Celery reports billiard's exceptions, wrapped once in ExceptionWithTraceback."""
    assert celery_exceptions.WorkerLostError is WorkerLostError
    assert celery_exceptions.TimeLimitExceeded is TimeLimitExceeded
    wrapped = _info(WorkerLostError("gone")).exception
    assert isinstance(wrapped, ExceptionWithTraceback)
    assert isinstance(wrapped.exc, WorkerLostError)


def test_request_exposes_what_a_lost_run_is_built_from() -> None:
    for name in ("task", "message", "hostname"):
        assert isinstance(inspect.getattr_static(Request, name), property), name
    assert Request.time_start is None  # set by on_accepted (wall-clock seconds)
    assert "delivery_tag" in inspect.signature(Message.__init__).parameters


class _LostTask(Task):  # type: ignore[type-arg]
    """A task that takes its lost runs over, as vox_flow's VoxTask does."""

    acks_late = True

    def __init__(self) -> None:
        self.lost: list[LostRun] = []

    def run_lost(self, lost: LostRun) -> bool:
        self.lost.append(lost)
        return True


def _nothing() -> None:
    return None


def _request(acks: list[bool]) -> LostRunRequest:
    """A LostRunRequest for a real kombu message (in-memory transport), as a worker makes it."""
    app = Celery("t", set_as_current=False)
    task = app.task(base=_LostTask, name="t.lost", shared=False)(_nothing)
    headers, properties, body, _ = app.amqp.create_task_message("tid-1", task.name, (), {})
    with Connection("memory://") as connection:
        channel = connection.default_channel
        queue = Queue("q", channel=channel)
        queue.declare()
        connection.Producer(channel).publish(
            body, routing_key="q", headers=headers, serializer="json", **properties
        )
        message = queue.get(no_ack=False)
    assert message is not None
    request = LostRunRequest(
        message, app=app, task=task, hostname="w1@host", on_ack=lambda *_: acks.append(True)
    )
    request.on_accepted(pid=1, time_accepted=time.monotonic())  # how Celery sets time_start
    return request


@pytest.mark.parametrize(
    ("report", "error_type"),
    [
        (lambda r: r.on_failure(_info(WorkerLostError("gone"))), "WorkerLostError"),
        (lambda r: r.on_failure(_info(TimeLimitExceeded(3.0))), "TimeLimitExceeded"),
        (lambda r: r.on_timeout(False, 3.0), "TimeLimitExceeded"),
    ],
)
def test_a_lost_run_is_handed_to_the_task(report: Any, error_type: str) -> None:
    acks: list[bool] = []
    request = _request(acks)
    report(request)
    task: _LostTask = request.task
    [lost] = task.lost
    assert lost.task_name == "t.lost" and lost.error_type == error_type
    assert lost.delivery_tag == request.message.delivery_tag and lost.delivery_tag
    assert lost.hostname == "w1@host"
    assert lost.started_at is not None and abs(lost.started_at.timestamp() - time.time()) < 5
    assert acks == [True]


def test_the_hook_is_found_without_source_files() -> None:
    # kombu installed as bytecode only: getsource fails, the code's constants still hold
    # the hook's keyword.
    namespace: dict[str, object] = {}
    exec(
        compile(
            "def _put(self, queue, message, **kwargs):\n"
            "    batch = kwargs.pop('_publish_batch', None)\n",
            "<no source>",
            "exec",
        ),
        namespace,
    )
    from vox_flow._celery.versions import _source

    assert "_publish_batch" in _source(namespace["_put"])
