"""What a monitor sees of a solo worker while a run blocks its loop (vox_flow/_celery/liveness.py),
and how a typed task's result is shown (vox_flow/_celery/request.py).

Each test pins one thing vox_flow relies on in Celery, and fails if Celery changes it. Events
go through kombu's in-memory transport and are read back with Celery's own event receiver, as
Flower reads them: no broker.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, Task
from celery.app.trace import trace_task
from celery.concurrency import prefork, thread
from celery.concurrency.solo import TaskPool as SoloPool
from celery.events.state import HEARTBEAT_EXPIRE_WINDOW
from celery.events.state import Worker as MonitoredWorker
from celery.utils.saferepr import saferepr
from celery.worker import heartbeat, state
from celery.worker.consumer.events import Events
from celery.worker.consumer.heart import Heart as HeartStep
from celery.worker.request import Request, create_request_cls
from kombu import Connection, Queue

from vox_flow._celery.liveness import (
    HEARTBEAT,
    Liveness,
    active_run,
    heartbeat_fields,
    heartbeat_interval,
    runs_in_loop,
    take_buffered,
)
from vox_flow._celery.request import LostRunRequest, unquoted


def _app() -> Celery:
    return Celery("t", broker="memory://", set_as_current=False)


class Monitor:
    """Celery's event receiver on the in-memory transport: what Flower would receive."""

    def __init__(self, app: Celery) -> None:
        self.events: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        receiver = app.events.Receiver(self._connection, handlers={"*": self.events.append})
        self._context = receiver.consumer_context()
        self._consumer_connection, _, _ = self._context.__enter__()

    def received(self, hostname: str) -> list[dict[str, Any]]:
        """Every event of ``hostname`` received so far."""
        for _ in range(3):
            with contextlib.suppress(TimeoutError):
                self._consumer_connection.drain_events(timeout=0.05)
        return [e for e in self.events if e.get("hostname") == hostname]

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self._connection.close()


@pytest.fixture
def app() -> Celery:
    return _app()


@pytest.fixture
def monitor(app: Celery) -> Iterator[Monitor]:
    watching = Monitor(app)
    yield watching
    watching.close()


def _hostname() -> str:
    return f"vf1-{uuid.uuid4().hex[:6]}@test"  # the in-memory broker is the process's: unique


def _loop_dispatcher(app: Celery, hostname: str) -> Any:
    """The consumer's event dispatcher as Celery's Events bootstep builds it with a hub."""
    consumer = SimpleNamespace(
        app=app,
        hub=object(),  # an event loop
        hostname=hostname,
        amqheartbeat=0,
        connection_for_write=lambda heartbeat=None: app.connection_for_write(),
        on_send_event_buffered=lambda: None,
    )
    Events(consumer).start(consumer)
    return consumer.event_dispatcher  # type: ignore[attr-defined]


# What Celery does that makes a solo worker look dead while it runs.


def test_with_an_event_loop_the_consumer_buffers_task_events_for_the_loop_to_flush(
    app: Celery, monitor: Monitor
) -> None:
    hostname = _hostname()
    dispatcher = _loop_dispatcher(app, hostname)
    assert set(dispatcher.buffer_group) == {"task"}
    dispatcher.send("task-started", uuid="t1")
    dispatcher.send("worker-heartbeat", freq=2.0)  # not buffered
    assert [e["type"] for e in monitor.received(hostname)] == ["worker-heartbeat"]
    assert [e["type"] for e in dispatcher._group_buffer["task"]] == ["task-started"]
    dispatcher.flush()
    assert [e["type"] for e in monitor.received(hostname)] == ["worker-heartbeat", "task-started"]


def test_solo_runs_a_task_inline_after_accepting_it() -> None:
    """The run blocks the thread that handed it over (the consumer's loop)."""
    seen: list[tuple[str, int]] = []
    pool = SoloPool()
    pool.apply_async(
        lambda: seen.append(("run", threading.get_ident())),
        accept_callback=lambda pid, at: seen.append(("accepted", threading.get_ident())),
        callback=lambda result: None,
    )
    here = threading.get_ident()
    assert seen == [("accepted", here), ("run", here)]
    assert runs_in_loop(SimpleNamespace(pool=pool))
    for other in (prefork.TaskPool, thread.TaskPool):
        assert not runs_in_loop(SimpleNamespace(pool=object.__new__(other)))


def test_heart_runs_on_the_loop_timer_with_the_step_s_interval() -> None:
    timer = SimpleNamespace(call_repeatedly=lambda *a: pytest.fail("events are off"))
    eventer = SimpleNamespace(enabled=False, on_enabled=set(), on_disabled=set())
    consumer = SimpleNamespace(timer=timer, event_dispatcher=eventer)
    HeartStep(consumer, heartbeat_interval=3.5).start(consumer)
    assert heartbeat_interval(consumer) == 3.5
    HeartStep(consumer).start(consumer)
    assert heartbeat_interval(consumer) == 2.0  # Celery's default
    assert heartbeat_interval(SimpleNamespace(heart=None)) is None  # --without-heartbeat


def test_a_monitor_expires_a_worker_two_heartbeat_periods_after_its_last() -> None:
    """So one beat every half period keeps it online with room to spare."""
    assert HEARTBEAT_EXPIRE_WINDOW == 200
    worker = MonitoredWorker("vf1@test")
    now = time.time()
    worker.event("heartbeat", now, now, {"freq": 2.0})
    assert worker.heartbeat_expires == pytest.approx(now + 4.0)


# What Liveness relies on.


def test_heartbeat_fields_are_the_ones_celery_s_heart_sends() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    eventer = SimpleNamespace(
        enabled=True,
        on_enabled=set(),
        on_disabled=set(),
        send=lambda type_, **fields: sent.append((type_, fields)),
    )
    heartbeat.Heart(SimpleNamespace(), eventer, interval=2.0)._send(HEARTBEAT)
    [(kind, fields)] = sent
    fields.pop("retry")
    ours = heartbeat_fields(2.0)
    assert kind == HEARTBEAT and fields.keys() == ours.keys()
    assert {k: v for k, v in fields.items() if k != "loadavg"} == {
        k: v for k, v in ours.items() if k != "loadavg"
    }


class _Request:
    def __init__(self, task_id: str) -> None:
        self.id, self.name = task_id, "t.run"


@pytest.fixture
def no_active_runs() -> Iterator[None]:
    """No run active in this process's worker state (other tests leave accepted requests)."""
    left = list(state.active_requests)
    for request in left:
        state.active_requests.discard(request)
    yield
    for request in left:
        state.active_requests.add(request)


def test_a_run_is_active_from_its_acceptance_to_its_end(no_active_runs: None) -> None:
    assert active_run() is None
    first, second = _Request("r1"), _Request("r2")
    state.task_accepted(first)  # what Request.on_accepted does
    try:
        number = active_run()
        assert number is not None
    finally:
        state.task_ready(first)  # what on_success / on_failure do
    assert active_run() is None
    state.task_accepted(second)
    try:
        assert active_run() not in (None, number)  # a new run, a new number
    finally:
        state.task_ready(second)


def test_taking_the_buffer_publishes_each_event_once_as_the_loop_would(
    app: Celery, monitor: Monitor
) -> None:
    hostname = _hostname()
    dispatcher = _loop_dispatcher(app, hostname)
    dispatcher.send("task-received", uuid="t1", name="t.run")
    dispatcher.send("task-started", uuid="t1")
    with app.connection_for_write() as connection:
        own = app.events.Dispatcher(connection, hostname=hostname, buffer_while_offline=False)
        assert take_buffered(dispatcher, own.producer) == 2
        dispatcher.flush()  # the loop, free again: nothing left to send twice
        assert take_buffered(dispatcher, own.producer) == 0
    events = [(e["type"], e["uuid"]) for e in monitor.received(hostname)]
    assert events == [("task-received", "t1"), ("task-started", "t1")]


def test_taking_the_buffer_keeps_what_the_loop_appends_meanwhile(app: Celery) -> None:
    dispatcher = _loop_dispatcher(app, _hostname())
    dispatcher.send("task-started", uuid="t1")
    published: list[Any] = []

    def publish(body: Any, **_: Any) -> None:
        published.append([e["type"] for e in body])
        dispatcher.send("task-succeeded", uuid="t1")  # the run ended during the write

    assert take_buffered(dispatcher, SimpleNamespace(publish=publish)) == 1
    assert published == [["task-started"]]
    assert [e["type"] for e in dispatcher._group_buffer["task"]] == ["task-succeeded"]


def test_the_loop_s_flush_waits_for_the_lock_a_take_holds(app: Celery) -> None:
    dispatcher = _loop_dispatcher(app, _hostname())
    dispatcher.send("task-started", uuid="t1")
    with dispatcher.mutex:
        flushing = threading.Thread(target=dispatcher.flush)
        flushing.start()
        flushing.join(0.2)
        assert flushing.is_alive()
    flushing.join(5)
    assert not dispatcher._group_buffer["task"]
    assert not dispatcher._closed  # the flag take_buffered reads


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _liveness(
    app: Celery, hostname: str, interval: float | None = 2.0
) -> tuple[Liveness, Any, _Clock, dict[str, int | None]]:
    dispatcher = _loop_dispatcher(app, hostname)
    consumer = SimpleNamespace(
        app=app,
        hostname=hostname,
        event_dispatcher=dispatcher,
        pool=SoloPool(),
        heart=None if interval is None else SimpleNamespace(interval=interval),
    )
    liveness = Liveness.of_consumer(consumer)
    assert liveness is not None and liveness.interval == interval
    clock, run = _Clock(), {"now": None}
    liveness.clock, liveness.active = clock, lambda: run["now"]
    return liveness, dispatcher, clock, run


def _kinds(monitor: Monitor, hostname: str) -> list[str]:
    return [e["type"] for e in monitor.received(hostname)]


def test_while_a_run_is_active_the_buffered_events_go_and_heartbeats_follow(
    app: Celery, monitor: Monitor
) -> None:
    hostname = _hostname()
    liveness, dispatcher, clock, run = _liveness(app, hostname)
    dispatcher.send("task-started", uuid="t1")
    liveness.keep()  # no run is active: the loop does this itself
    assert _kinds(monitor, hostname) == [] and liveness._dispatcher is None
    run["now"] = 1
    liveness.keep()  # at once in a new run
    assert _kinds(monitor, hostname) == ["task-started", HEARTBEAT]
    beat = monitor.received(hostname)[-1]
    assert beat["freq"] == 2.0 and beat["sw_ident"] == "py-celery"
    for _ in range(4):  # every half period after that
        clock.now += 0.5
        liveness.keep()
    assert _kinds(monitor, hostname).count(HEARTBEAT) == 3
    run["now"] = 2  # the next run: a beat at once again
    clock.now += 0.25
    liveness.keep()
    assert _kinds(monitor, hostname).count(HEARTBEAT) == 4
    dispatcher.enabled = False  # events turned off (remote control): nothing goes
    clock.now += 5
    liveness.keep()
    assert _kinds(monitor, hostname).count(HEARTBEAT) == 4
    liveness.close()
    dispatcher.enabled = True
    liveness.keep()
    assert _kinds(monitor, hostname).count(HEARTBEAT) == 4 and liveness._dispatcher is None


def test_without_heartbeats_only_the_task_events_go(app: Celery, monitor: Monitor) -> None:
    hostname = _hostname()
    liveness, dispatcher, _, run = _liveness(app, hostname, interval=None)
    dispatcher.send("task-started", uuid="t1")
    run["now"] = 1
    liveness.keep()
    assert _kinds(monitor, hostname) == ["task-started"]


def test_a_failed_send_raises_and_the_next_keep_connects_anew(
    app: Celery, monitor: Monitor
) -> None:
    hostname = _hostname()
    liveness, _, clock, run = _liveness(app, hostname)
    run["now"] = 1
    liveness.keep()
    broken = liveness._dispatcher

    def refuse(*_: Any, **__: Any) -> None:
        raise ConnectionError("broker gone")

    broken.send = refuse
    clock.now += 1.0
    with pytest.raises(ConnectionError):
        liveness.keep()
    assert liveness._dispatcher is None
    liveness.keep()
    assert liveness._dispatcher is not broken
    assert _kinds(monitor, hostname) == [HEARTBEAT, HEARTBEAT]


def test_a_pool_that_leaves_the_loop_free_gets_no_liveness() -> None:
    consumer = SimpleNamespace(pool=object.__new__(prefork.TaskPool))
    assert Liveness.of_consumer(consumer) is None


# How a typed task's result is shown in task-succeeded.

TEXTS = [
    '{"vf": 1, "output": {"id": "a"}, "trace_id": null}',
    '{"vf": 1, "output": {"s": "it\'s \\\\\' \\"q\\" \\\\n é"}, "trace_id": "x"}',
    "\\'",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_unquoted_undoes_celery_s_repr_of_a_string(text: str) -> None:
    assert unquoted(saferepr(text, Task.resultrepr_maxsize)) == text


def test_unquoted_shows_a_truncated_result_as_its_text_cut_short() -> None:
    text = json.dumps({"vf": 1, "output": {"x": "it's " * 400}})
    shown = unquoted(saferepr(text, Task.resultrepr_maxsize))
    assert shown.endswith("...") and text.startswith(shown[:-3]) and len(shown) < len(text)


@pytest.mark.parametrize("value", [5, None, ["a"], {"a": 1}, b"x"])
def test_unquoted_leaves_the_repr_of_anything_else_alone(value: object) -> None:
    shown = saferepr(value, Task.resultrepr_maxsize)
    assert unquoted(shown) == shown


def _returns(text: str) -> str:
    return text


def test_a_text_result_reaches_task_succeeded_as_the_text_and_is_stored_as_is() -> None:
    """Through the tracer and the request class a worker really uses."""
    app = _app()
    task = app.task(name="t.text", shared=False)(_returns)
    text = TEXTS[1]
    result, info, runtime, shown = trace_task(task, "tid-1", (text,), {}, app=app)
    assert result == text and info is None and shown == saferepr(text, task.resultrepr_maxsize)
    sent: list[tuple[str, dict[str, Any]]] = []
    eventer = SimpleNamespace(enabled=True, send=lambda type_, **f: sent.append((type_, f)))
    worker_request = create_request_cls(LostRunRequest, task, SoloPool(), "w1@test", eventer)
    assert issubclass(worker_request, LostRunRequest)
    headers, properties, body, _ = app.amqp.create_task_message("tid-1", task.name, (text,), {})
    with Connection("memory://") as connection:
        channel = connection.default_channel
        queue = Queue(f"q-{uuid.uuid4().hex[:6]}", channel=channel)
        queue.declare()
        connection.Producer(channel).publish(
            body, routing_key=queue.name, headers=headers, serializer="json", **properties
        )
        message = queue.get(no_ack=False)
    request = worker_request(message, app=app, task=task, hostname="w1@test", eventer=eventer)
    request.on_success((0, shown, runtime))
    [(kind, fields)] = sent
    assert kind == "task-succeeded" and fields["result"] == text
    assert json.loads(fields["result"])["output"]["s"].startswith("it's")


def test_send_event_keeps_celery_s_signature() -> None:
    ours = inspect.signature(LostRunRequest.send_event).parameters
    theirs = inspect.signature(Request.send_event).parameters
    assert [(p.name, p.kind) for p in ours.values()] == [(p.name, p.kind) for p in theirs.values()]
