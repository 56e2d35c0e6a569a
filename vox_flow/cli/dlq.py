"""`vox-flow dlq`: list, show, replay and purge dead letters.

Replay and purge are operator actions: each appends a signed audit entry and runs its Redis
effect through the audit outbox (``vox_flow.actions.perform.perform``), so neither happens
unrecorded and a crash between the entry and the effect is finished by the outbox. Both
effects are idempotent, as the outbox needs: the store's replay is a state machine that runs
the task once however often it is called, and purging an id that is gone changes nothing.

Exit codes: 0 done, 1 no such dead letter (or broker/task unknown), 2 refused (an invalid
payload edit, or a purge without confirmation) with nothing changed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vox_flow.actions.deadletters import PURGE, REPLAY
from vox_flow.deadletters.store import DeadLetterNotFound, DeadLetterStore
from vox_flow.errors import PayloadError, UnknownTask

if TYPE_CHECKING:
    from vox_flow.application import VoxFlow
    from vox_flow.contracts.audit import AuditEntry
    from vox_flow.contracts.task import DeadLetter

NOT_FOUND, REFUSED = 1, 2
# Ids per purge audit entry: an entry names exactly what it deleted, and stays small.
PURGE_CHUNK = 1000

Handler = Callable[[argparse.Namespace], int]


class _Failure(Exception):
    """A command failed in a way the operator must be told about (message, exit code)."""

    def __init__(self, message: str, code: int, fields: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.code = code
        self.fields = fields or []


def register(sub: Any) -> None:
    """Add the `dlq` sub-command and its actions."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "dlq", help="dead letters: list, show, replay, purge"
    )
    actions = parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--task", default=None, metavar="NAME", help="only this task's")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.set_defaults(handler=_guard(_list))

    show = actions.add_parser("show", help="one dead letter: payload, attempts, traceback")
    show.add_argument("id")
    show.set_defaults(handler=_guard(_show))

    replay = actions.add_parser(
        "replay", help="enqueue the task again (once, however often this is run; audited)"
    )
    replay.add_argument("id")
    replay.add_argument(
        "--payload",
        type=Path,
        default=None,
        metavar="FILE",
        help="a JSON file with an edited payload (- for stdin); validated before anything runs",
    )
    replay.set_defaults(handler=_guard(_replay))

    purge = actions.add_parser("purge", help="delete dead letters for good (audited)")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", default=None)
    which.add_argument("--all", action="store_true", help="every dead letter there is now")
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=_guard(_purge))

    for action in (replay, purge):
        action.add_argument("--reason", default="", help="why (kept in the audit entry)")
        action.add_argument(
            "--actor", default=None, help="who (default: login name @ VOX_FLOW_NODE_ID)"
        )
    for action in (listing, show, replay, purge):
        action.add_argument("--json", action="store_true", help="one JSON document on stdout")


# --- plumbing -----------------------------------------------------------------------------


def _guard(handler: Handler) -> Handler:
    """Turn the failures an operator can act on into a message and an exit code."""

    def run(args: argparse.Namespace) -> int:
        import redis

        try:
            return handler(args)
        except DeadLetterNotFound as exc:
            failure = _Failure(str(exc), NOT_FOUND)
        except UnknownTask as exc:
            failure = _Failure(str(exc), NOT_FOUND)
        except PayloadError as exc:
            failure = _Failure(f"refused, nothing changed: {exc}", REFUSED, exc.errors)
        except redis.ConnectionError as exc:
            failure = _Failure(f"cannot reach the broker: {exc}", NOT_FOUND)
        except _Failure as exc:
            failure = exc
        print(f"error: {failure}", file=sys.stderr)
        for field, reason in failure.fields:
            print(f"  {field}: {reason}", file=sys.stderr)
        if args.json:
            error = {"message": str(failure), "code": failure.code}
            if failure.fields:
                error["fields"] = [{"field": f, "reason": r} for f, r in failure.fields]
            _emit({"v": 1, "error": error})
        return failure.code

    return run


def _app() -> VoxFlow:
    from vox_flow.app import app

    return app


def _emit(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, default=str))


def _actor(args: argparse.Namespace, app: VoxFlow) -> str:
    return str(args.actor or f"{getpass.getuser()}@{app.settings.node_id}")


def _perform(
    app: VoxFlow, args: argparse.Namespace, requests: list[tuple[str, str, dict[str, Any]]]
) -> tuple[list[AuditEntry], dict[int, Any]]:
    """Do (action, target, payload) requests as audited operator actions, one transaction."""
    from vox_flow.actions import registry
    from vox_flow.actions.perform import Action, Auditor, perform_many

    outcomes: dict[int, Any] = {}
    auditor = Auditor.open(app.settings)
    try:
        actor = _actor(args, app)
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
    finally:
        auditor.store.dispose()
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
        raise _Failure("--limit must be at least 1", REFUSED)
    store = DeadLetterStore(_app().redis)
    letters = store.list(limit=args.limit, task=args.task)
    if args.json:
        _emit({"v": 1, "total": store.count(), "data": [_summary(x) for x in letters]})
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
    letter = DeadLetterStore(_app().redis).get(args.id)
    if args.json:
        _emit({"v": 1, "data": letter.model_dump(mode="json")})
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
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise _Failure(f"cannot read --payload {path}: {exc}", REFUSED) from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Failure(f"--payload {path} is not JSON: {exc}", REFUSED) from None
    if not isinstance(payload, dict):
        raise _Failure(f"--payload {path} must hold a JSON object, not {payload!r:.40}", REFUSED)
    return payload


def _replay(args: argparse.Namespace) -> int:
    from vox_flow.tasks import lookup

    app = _app()
    letter = DeadLetterStore(app.redis).get(args.id)
    payload = None if args.payload is None else _read_payload(args.payload)
    if payload is not None:
        # Refused here, before the audit entry: an invalid edit changes nothing anywhere.
        lookup(app, letter.task_name).validate(payload)
    [entry], outcomes = _perform(app, args, [(REPLAY, letter.id, {"payload": payload})])
    outcome = outcomes.get(entry.seq)
    if outcome is None:
        raise DeadLetterNotFound(letter.id)  # purged between our read and the effect
    task_id, started = outcome
    if args.json:
        data = {"id": letter.id, "task_id": task_id, "started": started, "audit_seq": entry.seq}
        _emit({"v": 1, "data": data})
    elif started:
        print(f"replayed {letter.id} as task {task_id} (audit entry {entry.seq})")
    else:
        print(
            f"{letter.id} was already replayed as task {task_id}; not enqueued again "
            f"(audit entry {entry.seq})"
        )
    return 0


def _confirm(question: str, args: argparse.Namespace) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise _Failure(
            "refusing to purge without confirmation: pass --yes (stdin is not a terminal)",
            REFUSED,
        )
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise _Failure("not confirmed; nothing purged", REFUSED)


def _purge(args: argparse.Namespace) -> int:
    app = _app()
    store = DeadLetterStore(app.redis)
    if args.all:
        # The ids there are now: a dead letter arriving after the confirmation is kept.
        ids = store.ids()
        if not ids:
            return _purged(args, [], [])
        _confirm(f"Purge all {len(ids)} dead letters? This cannot be undone.", args)
        chunks = [ids[i : i + PURGE_CHUNK] for i in range(0, len(ids), PURGE_CHUNK)]
        requests = [(PURGE, "all", {"ids": chunk}) for chunk in chunks]
    else:
        letter = store.get(args.id)
        _confirm(
            f"Purge dead letter {letter.id} ({letter.task_name})? This cannot be undone.", args
        )
        requests = [(PURGE, letter.id, {"ids": [letter.id]})]
    entries, outcomes = _perform(app, args, requests)
    deleted = [i for entry in entries for i in outcomes.get(entry.seq, [])]
    if not args.all and not deleted:
        raise DeadLetterNotFound(args.id)  # purged by someone else meanwhile
    return _purged(args, deleted, [entry.seq for entry in entries])


def _purged(args: argparse.Namespace, deleted: list[str], seqs: list[int]) -> int:
    if args.json:
        _emit({"v": 1, "data": {"purged": deleted, "count": len(deleted), "audit_seqs": seqs}})
    elif not deleted:
        print("no dead letters to purge")
    else:
        entries = ", ".join(str(seq) for seq in seqs)
        print(f"purged {len(deleted)} dead letter(s) (audit entries {entries})")
    return 0
