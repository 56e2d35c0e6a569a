"""The version gate: vox_flow refuses to start on a Celery or kombu it was not built for.

``submit`` captures the Redis command kombu would run through kombu's publish-batch hook
(``_publish_batch``), which first exists in kombu 5.7.0. On an older kombu the keyword is
passed through to ``_put`` (``_put_fanout`` for the task-sent event), which sends the message
*and then* fails: the run is enqueued without its idempotency key and the caller, told it
failed, may enqueue it twice. So the gate checks the hook itself in both methods, not only the
version number.
"""

from __future__ import annotations

import functools
import inspect
import re
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

# The range vox_flow is tested on; pyproject.toml pins the same.
KOMBU_RANGE = ((5, 7), (5, 8))
CELERY_RANGE = ((5, 7), (5, 8))

# The kombu Redis ``Channel`` methods a captured publish goes through (a task message, a
# task-sent event): each must hand its command to the publish-batch hook instead of sending it.
HOOKED = ("_put", "_put_fanout")


class IncompatibleCelery(RuntimeError):
    """The installed Celery or kombu lacks what vox_flow relies on."""


def _version(text: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise IncompatibleCelery(f"cannot read the version {text!r}")
    return int(match.group(1)), int(match.group(2))


def _spec(bounds: tuple[tuple[int, int], tuple[int, int]]) -> str:
    (low_major, low_minor), (high_major, high_minor) = bounds
    return f">={low_major}.{low_minor},<{high_major}.{high_minor}"


def _in(version: tuple[int, int], bounds: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    low, high = bounds
    return low <= version < high


def problems(kombu_version: str, celery_version: str, sources: Mapping[str, str]) -> list[str]:
    """What is wrong with these versions and with the source of kombu's Redis ``Channel``
    methods in ``sources`` (name -> source; every name in ``HOOKED`` is looked at)."""
    found = []
    if not _in(_version(kombu_version), KOMBU_RANGE):
        found.append(
            f"kombu {kombu_version} is installed; vox_flow needs kombu{_spec(KOMBU_RANGE)}"
        )
    if not _in(_version(celery_version), CELERY_RANGE):
        found.append(
            f"celery {celery_version} is installed; vox_flow needs celery{_spec(CELERY_RANGE)}"
        )
    unhooked = [name for name in HOOKED if "_publish_batch" not in sources.get(name, "")]
    if unhooked:
        found.append(
            f"kombu {kombu_version}'s Redis transport has no publish-batch hook in "
            f"Channel.{', Channel.'.join(unhooked)} (_publish_batch, kombu >= 5.7): submit "
            "could enqueue a run without its idempotency key"
        )
    return found


def _source(method: Any) -> str:
    """The method's source, or (installed without .py files) the strings its code holds:
    the hook's keyword is one of them either way."""
    try:
        return inspect.getsource(method)
    except (OSError, TypeError):
        return " ".join(c for c in method.__code__.co_consts if isinstance(c, str))


@functools.cache
def check_transport() -> None:
    """Raise IncompatibleCelery, naming the versions, unless this Celery/kombu will do."""
    # Lazy: the unit tests of problems() need no transport loaded.
    from kombu.transport import redis as kombu_redis

    found = problems(
        metadata.version("kombu"),
        metadata.version("celery"),
        {name: _source(getattr(kombu_redis.Channel, name)) for name in HOOKED},
    )
    from vox_flow._celery.transport import missing  # lazy, as above

    gone = missing()
    if gone:
        found.append(
            f"kombu {metadata.version('kombu')}'s Redis transport lacks what vox_flow's atomic "
            f"fetch overrides or calls: {', '.join(gone)}"
        )
    if found:
        raise IncompatibleCelery(
            "; ".join(found)
            + f" (pip install 'celery{_spec(CELERY_RANGE)}' 'kombu{_spec(KOMBU_RANGE)}')"
        )
