"""Throughput and submit latency of vox_flow against raw Celery, on one private Redis, one run.

    python bench/throughput.py [--quick]

Prints one JSON object as its last line. What it measures (no-op tasks, no result backend,
late acknowledgement everywhere, Redis on loopback without persistence):

* drain: the queue is filled first (staged under another name and renamed into the consumed
  queue, so filling costs nothing measured); the clock runs from the first message taken to
  the last one acknowledged.
  - ``vox_flow_drain_per_s`` / ``celery_drain_per_s``: typed tasks vs plain Celery tasks on the
    same workers (``vox-flow worker``'s default layout), ratio ``ratio_drain``;
  - every drain figure is the best of several rounds that alternate the layouts
    (``drain_rounds`` lists them all);
  - ``worker_default_per_s`` / ``celery_worker_default_per_s``: typed tasks on ``vox-flow
    worker`` vs on a default ``celery worker`` (prefork, one child per core), ratio
    ``ratio_worker_layout``; ``raw_celery_default_per_s``: a plain Celery app and task on a
    default ``celery worker``, for reference.
* fetch: the cost of vox_flow's atomic fetch (vox_flow/_celery/transport.py) alone: the raw
  Celery app and task on one ``celery worker -P solo`` process, with kombu's Redis transport
  (``kombu_fetch_per_s``) and with vox_flow's (``atomic_fetch_per_s``), rounds alternating;
  ratio ``ratio_atomic_fetch``.
* submit: ``submit_many`` (batches of 500) vs a loop of raw Celery's ``apply_async``
  (``ratio_submit_many``); p50/p99 latency of one ``submit`` (and of ``apply_async``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vox_flow.app import configure  # noqa: E402
from vox_flow.broker.server import RedisServer  # noqa: E402
from vox_flow.config import Settings  # noqa: E402

GO = "bench.go"  # the one queue the workers consume; filled by RENAME


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class Bench:
    def __init__(self, url: str, quick: bool) -> None:
        self.url = url
        self.quick = quick
        self.n_drain = 1_500 if quick else 10_000
        self.rounds = 2 if quick else 3
        self.n_submit = 3_000 if quick else 20_000
        self.n_latency = 1_000 if quick else 5_000
        import redis

        from bench import raw_app, tasks
        from vox_flow.app import app

        self.app, self.tasks, self.raw = app, tasks, raw_app
        self.redis = redis.Redis.from_url(url)
        self.env = {
            **os.environ,
            "VOX_FLOW_BROKER_URL": url,
            "VOX_FLOW_TASK_MODULES": "bench.tasks",
            "VOX_FLOW_IGNORE_RESULTS": "true",
            "PYTHONPATH": str(ROOT),
        }

    # --- workers --------------------------------------------------------------------------
    @staticmethod
    def stop(proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def vox_flow_worker(self, processes: int | None = None) -> subprocess.Popen[bytes]:
        """``vox-flow worker`` with its default layout (or ``processes`` children)."""
        args = [sys.executable, "-m", "vox_flow.cli", "worker", "-Q", GO, "-l", "warning"]
        if processes:
            args += ["-p", str(processes)]
        from vox_flow.config import Settings

        return self._ready(args, processes or Settings().worker_processes)

    def _ready(
        self, args: list[str], count: int, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        # Celery logs " ready." at INFO; warning level hides it, so wait on the broker instead.
        proc = subprocess.Popen(args, env={**self.env, **(env or {})}, cwd=ROOT,
                                start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.redis.delete(GO)
        deadline = time.monotonic() + 60
        # Each consumer blocks in BRPOP on GO once ready; CLIENT LIST shows it.
        while self._blocked_on_go() < count:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {' '.join(args)}")
            time.sleep(0.1)
        time.sleep(0.3)
        return proc

    def _blocked_on_go(self) -> int:
        # kombu's consumers block in BRPOP on GO, vox_flow's on GO's bell: both show "brpop".
        return sum(1 for c in self.redis.client_list() if c.get("cmd") == "brpop")

    def celery_worker(
        self, app: str, pool: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", GO, "-l", "warning"]
        if pool:
            args += ["-P", pool]
        return self._ready(args, 1, env)

    # --- filling and draining -------------------------------------------------------------
    def fill_typed(self, n: int) -> str:
        from vox_flow.submit import submit_many

        for start in range(0, n, 1000):
            submit_many(
                self.tasks.typed_noop, [{"n": i} for i in range(start, min(n, start + 1000))]
            )
        return self.tasks.typed_noop.queue

    def fill_plain(self, n: int, task: object, app: object) -> str:
        queue = "bench.staging"
        with app.producer_or_acquire() as producer, producer.batch(max_size=1000):  # type: ignore[attr-defined]
            for i in range(n):
                task.apply_async(args=(i,), queue=queue, producer=producer)  # type: ignore[attr-defined]
        return queue

    def warm_up(self, n: int = 200) -> None:
        """Run a few of each kind untimed: imports, scripts and threads start on first use."""
        self.drain(self.fill_typed(n), n)
        self.drain(self.fill_plain(n, self.tasks.plain_noop, self.app), n)

    def drain(self, staged: str, n: int) -> float:
        assert self.redis.llen(staged) == n, (staged, self.redis.llen(staged), n)
        self.redis.rename(staged, GO)
        began = None
        while True:
            left = self.redis.llen(GO)
            if began is None and left < n:
                began = time.perf_counter()
            if left == 0 and self.redis.hlen("unacked") == 0:
                break
            time.sleep(0.005)
        return n / (time.perf_counter() - (began or time.perf_counter()))

    # --- phases ---------------------------------------------------------------------------
    def submit_figures(self) -> dict[str, float]:
        from vox_flow.submit import submit, submit_many

        out: dict[str, float] = {}
        typed, raw = self.tasks.typed_noop, self.raw.noop
        submit(typed, {"n": 0})
        raw.apply_async(args=(0,))  # warm both paths (connections, scripts)
        latencies, raw_latencies = [], []
        for i in range(self.n_latency):
            t = time.perf_counter()
            submit(typed, {"n": i})
            latencies.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            raw.apply_async(args=(i,))
            raw_latencies.append((time.perf_counter() - t) * 1000)
        out["submit_p50_ms"] = round(percentile(latencies, 50), 3)
        out["submit_p99_ms"] = round(percentile(latencies, 99), 3)
        out["apply_async_p50_ms"] = round(percentile(raw_latencies, 50), 3)
        out["apply_async_p99_ms"] = round(percentile(raw_latencies, 99), 3)
        self.redis.flushall()

        n = self.n_submit
        t = time.perf_counter()
        for start in range(0, n, 500):
            submit_many(typed, [{"n": i} for i in range(start, min(n, start + 500))])
        out["submit_many_per_s"] = round(n / (time.perf_counter() - t))
        assert self.redis.llen(typed.queue) == n
        self.redis.flushall()
        t = time.perf_counter()
        for i in range(n):
            raw.apply_async(args=(i,))
        out["apply_async_loop_per_s"] = round(n / (time.perf_counter() - t))
        self.redis.flushall()
        out["ratio_submit_many"] = round(
            out["submit_many_per_s"] / out["apply_async_loop_per_s"], 2
        )
        return out

    def fetch_figures(self) -> dict[str, float]:
        """One solo worker of the raw app, kombu's transport vs vox_flow's, rounds alternating."""
        n, kombu, atomic = self.n_drain, [], []
        transports = {"kombu": "", "atomic": "vox_flow._celery.transport:Transport"}
        for round_ in range(self.rounds):
            order = ["kombu", "atomic"] if round_ % 2 == 0 else ["atomic", "kombu"]
            for name in order:
                env = {"BENCH_TRANSPORT": transports[name]}
                worker = self.celery_worker("bench.raw_app", pool="solo", env=env)
                try:
                    self.drain(self.fill_plain(200, self.raw.noop, self.raw.app), 200)
                    rate = self.drain(self.fill_plain(n, self.raw.noop, self.raw.app), n)
                finally:
                    self.stop(worker)
                (kombu if name == "kombu" else atomic).append(rate)
                self.redis.flushall()
        out: dict[str, float] = {
            "kombu_fetch_per_s": round(max(kombu)),
            "atomic_fetch_per_s": round(max(atomic)),
        }
        out["ratio_atomic_fetch"] = round(out["atomic_fetch_per_s"] / out["kombu_fetch_per_s"], 2)
        out["fetch_rounds"] = {  # type: ignore[assignment]
            "kombu": [round(r) for r in kombu],
            "atomic": [round(r) for r in atomic],
        }
        return out

    def drain_figures(self) -> dict[str, float]:
        """Rounds alternate the layouts so drift on a noisy machine falls on both sides of
        every ratio; each figure is the best round of its series."""
        n, rounds = self.n_drain, self.rounds
        typed, plain, default = [], [], []
        for round_ in range(rounds):
            worker = self.vox_flow_worker()
            try:
                self.warm_up()
                # Alternate which kind goes first, so neither always meets a colder worker.
                kinds = ["typed", "plain"] if round_ % 2 == 0 else ["plain", "typed"]
                for kind in kinds:
                    if kind == "typed":
                        typed.append(self.drain(self.fill_typed(n), n))
                    else:
                        staged = self.fill_plain(n, self.tasks.plain_noop, self.app)
                        plain.append(self.drain(staged, n))
            finally:
                self.stop(worker)
            worker = self.celery_worker("vox_flow.app")
            try:
                self.warm_up()
                default.append(self.drain(self.fill_typed(n), n))
            finally:
                self.stop(worker)
            self.redis.flushall()
        worker = self.celery_worker("bench.raw_app")
        try:
            warm = self.fill_plain(200, self.raw.noop, self.raw.app)
            self.drain(warm, 200)
            staged = self.fill_plain(n, self.raw.noop, self.raw.app)
            raw = self.drain(staged, n)
        finally:
            self.stop(worker)
        self.redis.flushall()
        out: dict[str, float] = {
            "vox_flow_drain_per_s": round(max(typed)),
            "celery_drain_per_s": round(max(plain)),
            "worker_default_per_s": round(max(typed)),
            "celery_worker_default_per_s": round(max(default)),
            "raw_celery_default_per_s": round(raw),
        }
        out["ratio_drain"] = round(out["vox_flow_drain_per_s"] / out["celery_drain_per_s"], 2)
        out["ratio_worker_layout"] = round(
            out["worker_default_per_s"] / out["celery_worker_default_per_s"], 2
        )
        out["drain_rounds"] = {  # type: ignore[assignment]
            "typed": [round(r) for r in typed],
            "plain": [round(r) for r in plain],
            "celery_default": [round(r) for r in default],
        }
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (under a minute)")
    args = parser.parse_args()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-")), appendonly=False)
    server.start()
    # This process's app, from explicit settings (its worker subprocesses get the same ones
    # in their environment: Bench.env).
    configure(Settings(broker_url=server.url, task_modules=["bench.tasks"], ignore_results=True))
    began = time.monotonic()
    try:
        bench = Bench(server.url, args.quick)
        figures: dict[str, object] = {"quick": args.quick, "cpus": os.cpu_count()}
        figures.update(bench.submit_figures())
        figures.update(bench.drain_figures())
        figures.update(bench.fetch_figures())
        figures["seconds"] = round(time.monotonic() - began, 1)
    finally:
        server.stop()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
