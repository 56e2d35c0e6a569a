"""The version gate: vox_flow refuses to start on a Celery or kombu it was not built for.

``submit`` captures the Redis command kombu would run through kombu's publish-batch hook
(``_publish_batch``), which first exists in kombu 5.7.0. On an older kombu the keyword is
passed through to ``_put``, which sends the message *and then* fails: the run is enqueued
without its idempotency key and the caller, told it failed, may enqueue it twice. So the gate
checks the hook itself, not only the version number.
"""

from __future__ import annotations

import functools
import inspect
import re
from importlib import metadata

# The range vox_flow is tested on; pyproject.toml pins the same.
KOMBU_RANGE = ((5, 7), (5, 8))
CELERY_RANGE = ((5, 7), (5, 8))


class IncompatibleCelery(RuntimeError):
    """The installed Celery or kombu lacks what vox_flow relies on."""


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise IncompatibleCelery(f"cannot read the version {text!r}")
    return int(match.group(1)), int(match.group(2))


def _in(version: tuple[int, int], bounds: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    low, high = bounds
    return low <= version < high


def problems(kombu_version: str, celery_version: str, put_source: str) -> list[str]:
    """What is wrong with these versions and this kombu Redis ``Channel._put`` source."""
    found = []
    if not _in(_version(kombu_version), KOMBU_RANGE):
        found.append(f"kombu {kombu_version} is installed; vox_flow needs kombu>=5.7,<5.8")
    if not _in(_version(celery_version), CELERY_RANGE):
        found.append(f"celery {celery_version} is installed; vox_flow needs celery>=5.7,<5.8")
    if "_publish_batch" not in put_source:
        found.append(
            f"kombu {kombu_version}'s Redis transport has no publish-batch hook "
            "(_publish_batch, kombu >= 5.7): submit could enqueue a run without its "
            "idempotency key"
        )
    return found


@functools.cache
def check_transport() -> None:
    """Raise IncompatibleCelery, naming the versions, unless this Celery/kombu will do."""
    from kombu.transport import redis as kombu_redis

    found = problems(
        metadata.version("kombu"),
        metadata.version("celery"),
        inspect.getsource(kombu_redis.Channel._put),
    )
    if found:
        raise IncompatibleCelery("; ".join(found) + " (pip install 'kombu>=5.7,<5.8')")
