"""The result envelope of a typed task: ``{"vf": 1, "output": ..., "trace_id": ...}``.

Stored as JSON *text*, not a dict, because Celery walks a returned dict with saferepr for
every task-succeeded event; that walk was the largest cost a typed task added to a no-op run.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vox_flow import jsonvalue

if TYPE_CHECKING:
    from pydantic import BaseModel

RESULT_PREFIX = '{"vf": 1, '
# Compact and UTF-8 as pydantic's model_dump_json; the value is checked, so allow_nan=False
# never fires (it is the guard should a change ever skip the check).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def encode_result(output: BaseModel, trace_id: str | None) -> str:
    """The envelope of ``output`` as the text a typed task returns.

    Raises JsonValueError naming the field (``output.x``) when the output is not strict JSON
    (``vox_flow.jsonvalue``): a NaN, say, which pydantic alone would store as ``null``, or as
    a token no JSON reader accepts. That is the task's bug; its run fails with that error.
    """
    data = jsonvalue.dump(output, field="output")
    output_json = _encode(data)
    return f'{RESULT_PREFIX}"output": {output_json}, "trace_id": {json.dumps(trace_id)}}}'


def decode_result(value: Any) -> dict[str, Any] | None:
    """The envelope of a typed task's stored result, or None if ``value`` is not one."""
    if isinstance(value, str) and value.startswith(RESULT_PREFIX):
        envelope: dict[str, Any] = json.loads(value)
        return envelope
    return None


def unwrap(payload: Any) -> Any:
    """A previous step's stored result as a plain payload (workflows pass results on)."""
    envelope = decode_result(payload)
    if envelope is not None:
        return envelope["output"]
    if isinstance(payload, list):
        return [unwrap(item) for item in payload]
    return payload
