"""Every Redis key, prefix and channel vox_flow owns, in one table.

All of them live in the broker's Redis under ``vf:``; kombu's own keys (queues, ``unacked``)
are kombu's and are read from its channel (``vox_flow._celery.layout``). A module that writes
a format owns its key here and is its only writer.
"""

from __future__ import annotations

# --- task queues (kombu's lists, named by vox_flow: tasks.py)
QUEUE_PREFIX = "vf."  # + task name -> the task's own queue (kombu adds priority suffixes)

# --- idempotency (idempotency.py; the submit key is written by submit's enqueue script).
# A key is scoped to its task: the same key given to two tasks names two effects.
IDEM_SUBMIT = "vf:idem:submit:"  # + scoped key -> "task id trace id" of the first run
IDEM_DONE = "vf:idem:done:"  # + scoped key -> the completed run's result
IDEM_CLAIM = "vf:idem:claim:"  # + scoped key -> token of the run holding the claim (a lease)

# --- bells (_celery/transport.py): one short list per queue, pushed to whenever a message is
# put on the queue, so that consumers blocked on it wake and run their atomic fetch.
BELL = "vf:bell:"  # + queue name (kombu's global_keyprefix in front, as for its own keys)
UNREADABLE = "vf:unreadable"  # list of the last 1,000 queue entries that were not messages

# --- attempts (attempts.py)
ATTEMPTS = "vf:attempts:"  # + task id -> list of Attempt JSON

# --- dead letters (deadletters/store.py)
DLQ_ENTRY = "vf:dlq:"  # + letter id -> hash {entry, state, replayed_task_id, ...}
DLQ_INDEX = "vf:dlq:index"  # zset letter id -> dead_at

# --- leader locks and fencing counters (leader.py)
SCHED_LEADER = "vf:sched:leader"
SCHED_FENCE = "vf:sched:fence"
CONTROL_LEADER = "vf:control:leader"
CONTROL_FENCE = "vf:control:fence"

# --- schedules (schedules/store.py)
SCHED_STATE = "vf:sched:s:"  # + schedule name -> hash of its state
SCHED_GENERATION = "vf:sched:generation"  # bumped by `vox-flow schedules reload`


def scoped_key(task_name: str, key: str) -> str:
    """An idempotency key scoped to its task; the length prefix keeps any two
    (task, key) pairs apart whatever characters either holds."""
    return f"{len(task_name)}:{task_name}:{key}"


def idem_submit(task_name: str, key: str) -> str:
    return IDEM_SUBMIT + scoped_key(task_name, key)


def idem_done(task_name: str, key: str) -> str:
    return IDEM_DONE + scoped_key(task_name, key)


def idem_claim(task_name: str, key: str) -> str:
    return IDEM_CLAIM + scoped_key(task_name, key)


def attempts(task_id: str) -> str:
    return ATTEMPTS + task_id


def dlq_entry(letter_id: str) -> str:
    return DLQ_ENTRY + letter_id
