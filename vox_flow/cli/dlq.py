"""`vox-flow dlq`: list, show, replay and purge dead letters.

Replay and purge are operator actions: each appends a signed audit entry and runs its Redis
effect through the audit outbox (``vox_flow.actions.perform.perform``), so neither happens
unrecorded and a crash between the entry and the effect is finished by the outbox. Both
effects are idempotent, as the outbox needs: the store's replay is a state machine that runs
the task once however often it is called, and purging an id that is gone changes nothing.

A replay is checked before its entry is appended (``actions.deadletters.replay_letter``): a
letter already replayed (or whose begun replay runs another payload) is refused with nothing
recorded, naming when and the task id of that replay; so is an edit that does not validate.
``--payload`` is strict JSON (``vox_flow.jsonvalue``) of at most ``MAX_PAYLOAD_BYTES`` (1 MiB),
and the entry carries it as validated (extra fields dropped).

Exit codes (common.py, as for every command): 0 done, 1 no such dead letter (or broker/task
unknown), 2 refused (an invalid or oversized payload edit, a letter already replayed, or a
purge without confirmation) with nothing changed, 3 recorded but the effect is pending.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vox_flow.cli import common

if TYPE_CHECKING:
    import argparse

    from vox_flow.actions.perform import Auditor
    from vox_flow.application import VoxFlow
    from vox_flow.contracts.audit import AuditEntry
    from vox_flow.contracts.task import DeadLetter
    from vox_flow.deadletters.store import DeadLetterStore

# Ids per purge audit entry: an entry names exactly what it deleted, and stays small.
PURGE_CHUNK = 1000


def register(sub: Any) -> None:
    """Add the `dlq` sub-command and its actions."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "dlq", help="dead letters: list, show, replay, purge"
    )
    actions = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--task", type=common.text, default=None, metavar="NAME",
                         help="only this task's")  # fmt: skip
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="one dead letter: payload, attempts, traceback")
    show.add_argument("id", type=common.text)
    show.set_defaults(handler=_show)

    replay = actions.add_parser(
        "replay", help="enqueue the task again (once, however often this is run; audited)"
    )
    replay.add_argument("id", type=common.text)
    replay.add_argument(
        "--payload",
        type=Path,
        default=None,
        metavar="FILE",
        help="a JSON file with an edited payload (- for stdin); validated before anything runs",
    )
    replay.set_defaults(handler=_replay)

    purge = actions.add_parser("purge", help="delete dead letters for good (audited)")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=common.text, nargs="?", default=None)
    which.add_argument("--all", action="store_true", help="every dead letter there is now")
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=_purge)

    for action in (replay, purge):
        common.add_actor(action)
    for action in (listing, show, replay, purge):
        common.add_json(action)


# --- plumbing -----------------------------------------------------------------------------


def _letters(app: VoxFlow) -> DeadLetterStore:
    from vox_flow.deadletters.store import DeadLetterStore  # pydantic models: not for --help

    return DeadLetterStore(app.redis)


def _perform(
    app: VoxFlow,
    auditor: Auditor,
    args: argparse.Namespace,
    requests: list[tuple[str, str, dict[str, Any]]],
) -> tuple[list[AuditEntry], dict[int, Any]]:
    """Do (action, target, payload) requests as audited operator actions, one transaction."""
    from vox_flow.actions import registry
    from vox_flow.actions.perform import Action, perform_many

    outcomes: dict[int, Any] = {}
    actor = common.actor(args)
    entries = perform_many(
        auditor.store,
        auditor.signer,
        registry.effects(app),
        [
            Action(actor, action, target, args.reason, payload)
            for action, target, payload in requests
        ],
        outcomes,
    )
    return entries, outcomes


def _summary(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "task": letter.task_name,
        "reason": letter.reason.value,
        "error_type": letter.error_type,
        "error_message": letter.error_message,
        "dead_at": letter.dead_at.isoformat(),
        "state": letter.state.value,
        "replayed_task_id": letter.replayed_task_id,
    }


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --- the actions ----------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise common.refused("--limit must be at least 1", "usage")
    store = _letters(common.app())
    letters = store.list(limit=args.limit, task=args.task)
    if args.json:
        print(json.dumps({"v": 1, "total": store.count(), "data": [_summary(x) for x in letters]},
                         indent=2, default=str))  # fmt: skip
        return 0
    if not letters:
        print("no dead letters" + (f" of task {args.task}" if args.task else ""))
        return 0
    task_width = max(4, *(len(letter.task_name) for letter in letters))
    print(
        f"{'ID':36}  {'DEAD AT (UTC)':19}  {'STATE':9}  {'REASON':15}  {'TASK':{task_width}}  ERROR"
    )
    for letter in letters:
        when = letter.dead_at.strftime("%Y-%m-%d %H:%M:%S")
        error = _short(f"{letter.error_type}: {letter.error_message}", 60)
        print(
            f"{letter.id:36}  {when:19}  {letter.state.value:9}  {letter.reason.value:15}  "
            f"{letter.task_name:{task_width}}  {error}"
        )
    print(f"{len(letters)} shown of {store.count()}")
    return 0


def _show(args: argparse.Namespace) -> int:
    letter = _letters(common.app()).get(args.id)
    if args.json:
        common.emit(letter.model_dump(mode="json"))
        return 0
    rows = [
        ("id", letter.id),
        ("task", f"{letter.task_name} (queue {letter.queue})"),
        ("state", letter.state.value),
        ("reason", letter.reason.value),
        ("error", f"{letter.error_type}: {letter.error_message}"),
        ("dead at", letter.dead_at.isoformat()),
        ("node", letter.node),
        ("trace id", letter.trace_id or "-"),
        ("idempotency key", letter.idempotency_key or "-"),
        ("replayed as", letter.replayed_task_id or "-"),
        ("payload", json.dumps(letter.payload, indent=2)),
    ]
    for name, value in rows:
        print(f"{name + ':':17}{value}")
    print(f"attempts ({len(letter.attempts)}):")
    for attempt in letter.attempts:
        error = f"  {attempt.error_type}: {attempt.error_message}" if attempt.error_type else ""
        print(
            f"  #{attempt.number} {attempt.outcome.value:9} {attempt.started_at.isoformat()} "
            f"on {attempt.node}{error}"
        )
    if letter.traceback:
        print("traceback:")
        print(letter.traceback.rstrip())
    return 0


def _read_payload(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (``-``: stdin), strict and at most MAX_PAYLOAD_BYTES."""
    from vox_flow import jsonvalue
    from vox_flow.actions.deadletters import MAX_PAYLOAD_BYTES

    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
        else:
            with path.open("rb") as file:
                data = file.read(MAX_PAYLOAD_BYTES + 1)  # never more, whatever its size
    except OSError as exc:
        raise common.refused(
            f"cannot read --payload {path}: {exc.strerror or exc}", "bad_input"
        ) from None
    if len(data) > MAX_PAYLOAD_BYTES:
        raise common.refused(
            f"refused, nothing changed: --payload {path} is larger than {MAX_PAYLOAD_BYTES} "
            "bytes (1 MiB), the most a replay takes",
            "bad_input",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise common.refused(
            f"refused, nothing changed: --payload {path} is not UTF-8 "
            f"(byte 0x{data[exc.start]:02x} at offset {exc.start})",
            "bad_input",
        ) from None
    try:
        payload = jsonvalue.parse(text, field="--payload")
    except jsonvalue.JsonValueError as exc:
        inside = exc.field.removeprefix("--payload").lstrip(".")
        where = f" at {inside}" if inside else ""
        raise common.CliError(
            f"refused, nothing changed: --payload {path}{where}: {exc.reason}",
            code="bad_input",
            status=common.REFUSED,
            fields=[(exc.field, exc.reason)],
        ) from None
    if not isinstance(payload, dict):
        raise common.refused(
            f"--payload {path} must hold a JSON object, not {payload!r:.40}", "bad_input"
        )
    return payload


def _replay(args: argparse.Namespace) -> int:
    payload = None if args.payload is None else _read_payload(args.payload)
    common.probe_broker()
    with common.auditor() as auditor:  # a store that cannot be opened fails before any read
        app = common.app()
        from vox_flow.actions.deadletters import AlreadyReplayed, PayloadTooLarge, replay_letter

        try:
            # Checked before the entry: a refused replay records nothing anywhere.
            entry, task_id, started = replay_letter(
                app, auditor, args.id, payload, actor=common.actor(args), reason=args.reason
            )
        except AlreadyReplayed as exc:
            letter = exc.letter
            raise common.CliError(
                str(exc),
                code="already_replayed",
                status=common.REFUSED,
                fields=[("id", f"{letter.state.value} as task {letter.replayed_task_id}")],
            ) from None
        except PayloadTooLarge as exc:
            raise common.refused(str(exc), "bad_input") from None
    if args.json:
        common.emit({"id": args.id, "task_id": task_id, "started": started, "audit_seq": entry.seq})
    elif started:
        print(f"replayed {args.id} as task {task_id} (audit entry {entry.seq})")
    else:
        # A replay begun before (cut short by a crash, or by another call since the check)
        # and finished by this one: its run, under its task id, was enqueued once.
        print(
            f"{args.id}: finished the replay begun as task {task_id}; nothing new enqueued "
            f"(audit entry {entry.seq})"
        )
    return 0


def _purge(args: argparse.Namespace) -> int:
    common.probe_broker()
    with common.auditor() as auditor:  # a store that cannot be opened fails before any read
        entries, outcomes = _purge_in(common.app(), auditor, args)
    from vox_flow.deadletters.store import DeadLetterNotFound

    deleted = [i for entry in entries for i in outcomes.get(entry.seq, [])]
    if not args.all and not deleted:
        raise DeadLetterNotFound(args.id)  # purged by someone else meanwhile
    return _purged(args, deleted, [entry.seq for entry in entries])


def _purge_in(
    app: VoxFlow, auditor: Auditor, args: argparse.Namespace
) -> tuple[list[AuditEntry], dict[int, Any]]:
    from vox_flow.actions.deadletters import PURGE

    store = _letters(app)
    if args.all:
        # The ids there are now: a dead letter arriving after the confirmation is kept.
        ids = store.ids()
        if not ids:
            return [], {}
        common.confirm(
            f"Purge all {len(ids)} dead letters? This cannot be undone.", args,
            unchanged="nothing purged",
        )  # fmt: skip
        chunks = [ids[i : i + PURGE_CHUNK] for i in range(0, len(ids), PURGE_CHUNK)]
        requests = [(PURGE, "all", {"ids": chunk}) for chunk in chunks]
    else:
        letter = store.get(args.id)
        common.confirm(
            f"Purge dead letter {letter.id} ({letter.task_name})? This cannot be undone.", args,
            unchanged="nothing purged",
        )  # fmt: skip
        requests = [(PURGE, letter.id, {"ids": [letter.id]})]
    return _perform(app, auditor, args, requests)


def _purged(args: argparse.Namespace, deleted: list[str], seqs: list[int]) -> int:
    if args.json:
        common.emit({"purged": deleted, "count": len(deleted), "audit_seqs": seqs})
    elif not deleted:
        print("no dead letters to purge")
    else:
        entries = ", ".join(str(seq) for seq in seqs)
        print(f"purged {len(deleted)} dead letter(s) (audit entries {entries})")
    return 0
