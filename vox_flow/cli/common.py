"""What every ``vox-flow`` command shares: exit codes, the error envelope, the settings, broker
and store a command uses, the actor of an audited action, and confirmation.

Every failure reaches the user as one line on stderr (``error: …``, then ``  field: reason``
lines when several fields are at fault) and, with ``--json``, as one document on stdout:
``{"v": 1, "error": {"code": …, "message": …, "fields": [{"field": …, "reason": …}]}}``.
:func:`run` is the one place that turns exceptions into that; ``--debug`` re-raises instead.

Importing this module is cheap (``vox-flow --help`` loads every command module): settings,
Redis, SQLAlchemy and the app are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from vox_flow.actions.perform import Auditor
    from vox_flow.application import VoxFlow
    from vox_flow.config import Settings
    from vox_flow.store import Store

# Exit codes, the same for every command (docs/operations.md#exit-codes).
OK = 0
FAILED = 1  # not found, unreachable, verification failed, unexpected error
REFUSED = 2  # invalid input (usage, a setting, a payload, a file, no confirmation): nothing changed
PENDING = 3  # the audit entry is recorded, its effect is pending (the outbox finishes it)
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
BROKEN_PIPE = 141  # stdout closed by the reader, e.g. `| head` (128 + SIGPIPE)

# What `vox_flow.app.create_app` uses when the settings name no broker; the CLI always names
# one, so that it can say which (tests/unit/test_cli.py keeps the two equal).
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
PROBE_TIMEOUT = 3.0  # seconds: a broker that has not answered a PING by then is unreachable


class CliError(Exception):
    """A failure the user is told about: a one-line message, the fields at fault, a stable
    ``code`` for scripts and the exit status."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "failed",
        status: int = FAILED,
        fields: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # one line, whatever the source said
        self.code = code
        self.status = status
        self.fields = list(fields)


def refused(message: str, code: str = "refused") -> CliError:
    """A refusal of invalid input; nothing was changed (exit 2)."""
    return CliError(message, code=code, status=REFUSED)


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors reported through the error envelope (exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise refused(f"{self.prog}: {message} (see {self.prog} --help)", "usage")


def text(value: str) -> str:
    """An argparse ``type`` for text that goes into an audit entry: refuses bytes that are
    not UTF-8 (Python hands them over as lone surrogates), naming the option."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        byte = ord(value[exc.start]) - 0xDC00
        where = f"byte 0x{byte:02x}" if 0x80 <= byte <= 0xFF else "a lone surrogate"
        raise argparse.ArgumentTypeError(
            f"not valid UTF-8 ({where} at character {exc.start + 1})"
        ) from None
    return value


def add_json(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option: data, or the error envelope, as one JSON document on stdout."""
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def emit(data: Any) -> None:
    """Print ``{"v": 1, "data": data}``."""
    print(json.dumps({"v": 1, "data": data}, indent=2, default=str))


def note(message: str) -> None:
    """Tell the user something on stderr (never on stdout, which may be a JSON document)."""
    print(message, file=sys.stderr, flush=True)


def hide_password(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# --- what one invocation uses ---------------------------------------------------------------


@dataclass
class _Invocation:
    """The settings, broker and store of the command being run (fresh for each :func:`run`)."""

    settings: Settings | None = None
    broker: str | None = None
    broker_from_dev: bool = False
    probed: bool = False
    store: str | None = None


_now = _Invocation()


def settings() -> Settings:
    """The settings (read once per command; a bad value fails it with the variable's name)."""
    if _now.settings is None:
        from vox_flow.config import load_settings  # pydantic-settings: not for --help

        _now.settings = load_settings()
    return _now.settings


def dev_broker_file(config: Settings) -> Path:
    """Where a running ``vox-flow dev`` names its broker: ``<data_dir>/dev/broker_url``."""
    return config.data_dir / "dev" / "broker_url"


@contextlib.contextmanager
def publish_dev_broker(config: Settings, url: str) -> Iterator[Path]:
    """While the block runs, :func:`dev_broker_file` names ``url``, locked: a reader tells a
    running ``dev`` from the file of one that was killed (the kernel drops a dead one's lock).
    The file is removed on exit (unless another ``dev`` replaced it meanwhile)."""
    path = dev_broker_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{url}\n".encode())
        os.replace(temp, path)  # readers never see a half-written file
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
        os.close(fd)


def _running_dev_broker(config: Settings) -> str | None:
    """The broker URL of a ``vox-flow dev`` running on this data dir, if one is."""
    path = dev_broker_file(config)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the dev that wrote it is running
            return os.read(fd, 4096).decode().strip() or None
        note(f"ignoring {path}: the vox-flow dev that wrote it is not running")
        return None
    finally:
        os.close(fd)


def broker_url() -> str:
    """The broker this command uses: ``VOX_FLOW_BROKER_URL``; when unset, the broker of a
    running ``vox-flow dev`` (same data dir), else :data:`DEFAULT_BROKER`. Says on stderr
    which, when it is not the variable."""
    if _now.broker is None:
        config = settings()
        if config.broker_url is not None:
            _now.broker = config.broker_url
        elif (dev := _running_dev_broker(config)) is not None:
            _now.broker, _now.broker_from_dev = dev, True
            note(f"using vox-flow dev's broker at {dev} (VOX_FLOW_BROKER_URL is unset)")
        else:
            _now.broker = DEFAULT_BROKER
            note(f"using the default broker {DEFAULT_BROKER} (VOX_FLOW_BROKER_URL is unset)")
    return _now.broker


def broker_from_dev() -> bool:
    """Whether :func:`broker_url` came from a running ``vox-flow dev``."""
    broker_url()
    return _now.broker_from_dev


def probe_broker() -> None:
    """Fail now, in one line, unless the broker answers a PING within PROBE_TIMEOUT (once
    per command: a command checks its broker, then its store, then builds the app)."""
    if _now.probed:
        return
    url = broker_url()  # a bad setting fails before Redis's client loads
    import redis  # not for --help

    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
        )
    except ValueError as exc:
        raise refused(
            f"VOX_FLOW_BROKER_URL: {exc} (got {hide_password(url)!r})", "bad_setting"
        ) from None
    try:
        client.ping()
    finally:
        client.close()
    _now.probed = True


def app(*, probe: bool = True) -> VoxFlow:
    """``vox_flow.app.app``, built from these settings and :func:`broker_url` (probed first,
    if not yet, unless ``probe`` is False)."""
    if probe:
        probe_broker()
    from vox_flow import app as composition  # Celery, kombu: not for --help

    url = broker_url()
    try:
        return composition.configure(settings().model_copy(update={"broker_url": url}))
    except composition.AlreadyConfigured:
        # Built already: this process embeds the CLI (a test, a program calling main()).
        built = composition.app
        if built.conf.broker_url != url:
            raise CliError(
                f"vox_flow.app.app is already built for the broker at "
                f"{hide_password(built.conf.broker_url)}, not {hide_password(url)}"
            ) from None
        return built


@contextlib.contextmanager
def _opening_store() -> Iterator[str]:
    """Around opening the store: remember its URL for messages, and blame a URL SQLAlchemy
    cannot parse (or whose dialect it does not know) on VOX_FLOW_STORE_URL."""
    url = _now.store = settings().store
    try:
        yield url
    except Exception as exc:
        if "sqlalchemy.exc.ArgumentError" in _names(exc):
            shown = hide_password(url)
            raise refused(f"VOX_FLOW_STORE_URL: {exc} (got {shown!r})", "bad_setting") from None
        if isinstance(exc, ModuleNotFoundError) and exc.name not in _DRIVERS:
            # Any other dialect's driver (MySQLdb, ...): name it and the URL that wants it.
            raise CliError(
                f"the store at {hide_password(url)} needs the Python module {exc.name}, which "
                "is not installed (vox_flow ships drivers for SQLite and, with "
                "pip install 'vox_flow[postgres]', PostgreSQL)",
                code="missing_driver",
            ) from None
        raise


def open_store(*, create: bool) -> Store:
    """The control store (migrated). ``create``: make it if there is none; otherwise a
    missing store fails with its URL (a read must not leave an empty store behind)."""
    from vox_flow.store import open_store as open_configured  # SQLAlchemy, alembic

    with _opening_store() as url:
        if not create:
            _require_store(url)
        return open_configured(settings())


@contextlib.contextmanager
def auditor() -> Iterator[Auditor]:
    """The control store (made if there is none) and the operator's key, for an audited
    action; the store is closed after the block."""
    # Opened once on its own first (a second open costs milliseconds), so that a store that
    # cannot be opened fails before the audit code and PyNaCl load.
    open_store(create=True).dispose()
    from vox_flow.actions.perform import Auditor

    with _opening_store():
        opened = Auditor.open(settings())
    try:
        yield opened
    finally:
        opened.store.dispose()


def _require_store(url: str) -> None:
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    missing = CliError(
        f"no store at {hide_password(url)} (VOX_FLOW_STORE_URL, or control.db in "
        "VOX_FLOW_DATA_DIR; the first audited action or `vox-flow store migrate` creates it)",
        code="no_store",
    )
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not os.path.exists(database):
            raise missing
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("audit_head"):
                raise missing
    finally:
        engine.dispose()


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container running as a bare uid)
        return f"uid{os.getuid()}"


def actor(args: argparse.Namespace) -> str:
    """``--actor``, or ``login@VOX_FLOW_NODE_ID``: one person has one name in the audit log."""
    given: str | None = getattr(args, "actor", None)
    return given or f"{_login()}@{settings().node_id}"


def add_actor(parser: argparse.ArgumentParser) -> None:
    """``--reason`` and ``--actor``, the two words an audited action records."""
    parser.add_argument("--reason", type=text, default="", help="why (kept in the audit entry)")
    parser.add_argument(
        "--actor", type=text, default=None, help="who (default: login name @ VOX_FLOW_NODE_ID)"
    )


def confirm(question: str, args: argparse.Namespace, *, unchanged: str) -> None:
    """Go on if ``--yes`` was given or the user answers y at the terminal; otherwise refuse
    (exit 2) saying ``unchanged`` (what was not done). Never asks when stdin is no terminal."""
    if getattr(args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise refused("refusing without confirmation: pass --yes (stdin is not a terminal)")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise refused(f"not confirmed; {unchanged}")


# --- turning exceptions into the envelope ----------------------------------------------------


def _names(exc: BaseException) -> set[str]:
    # By name, so that no library is imported to recognise its errors (it raised them: it is
    # loaded already).
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


_NOT_FOUND = {
    "vox_flow.deadletters.store.DeadLetterNotFound",
    "vox_flow.errors.UnknownTask",
    "vox_flow.schedules.operations.UnknownSchedule",
}
_KNOWN = {
    "vox_flow.errors.VoxFlowError",
    "vox_flow.audit.log.AuditError",
    "vox_flow.audit.keys.KeyFileError",
    "vox_flow._celery.versions.IncompatibleCelery",
    "vox_flow.broker.embedded.BrokerBusy",
    "vox_flow.broker.server.ServerStartError",
    "vox_flow.oplog.log.OpLogError",
}
_BROKER_DOWN = {
    "redis.exceptions.ConnectionError",
    "redis.exceptions.TimeoutError",
    "kombu.exceptions.OperationalError",
}
_STORE_DOWN = {"sqlalchemy.exc.DBAPIError", "sqlite3.Error", "psycopg.Error"}
# Store drivers by module name, and what to do when one is missing.
_DRIVERS = {
    "psycopg": "pip install 'vox_flow[postgres]'",
    "psycopg2": "use a postgresql+psycopg:// URL and pip install 'vox_flow[postgres]'",
}


def _reason(exc: BaseException) -> str:
    """The operating system's reason (``Connection refused``) if it gave one, else the
    error's own first line."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    orig = getattr(exc, "orig", None)  # SQLAlchemy's wrapper: the driver's own error
    lines = [line for line in str(orig or exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def _broker() -> str:
    return f" at {hide_password(_now.broker)}" if _now.broker else ""


def _store() -> str:
    url = _now.store or (_now.settings.store if _now.settings is not None else None)
    return f" at {hide_password(url)}" if url else ""


def _is_task_module(name: str | None) -> bool:
    """Whether ``name`` is (a parent package of) a module VOX_FLOW_TASK_MODULES names."""
    if name is None or _now.settings is None:
        return False
    return any(m == name or m.startswith(name + ".") for m in _now.settings.task_modules)


def translate(exc: BaseException) -> CliError:
    """The one-line account of ``exc`` that the user gets instead of a traceback."""
    if isinstance(exc, CliError):
        return exc
    names = _names(exc)
    if "pydantic_core._pydantic_core.ValidationError" in names and (
        getattr(exc, "title", None) == "Settings"
    ):
        from vox_flow.config import setting_errors

        fields = setting_errors(exc)  # type: ignore[arg-type]
        one = len(fields) == 1
        message = f"{fields[0][0]}: {fields[0][1]}" if one else f"{len(fields)} invalid settings"
        return CliError(message, code="bad_setting", status=REFUSED, fields=fields)
    if "vox_flow.actions.perform.EffectFailed" in names:
        entry = exc.entry  # type: ignore[attr-defined]
        why = translate(exc.__cause__).message if exc.__cause__ is not None else str(exc)
        return CliError(
            f"audit entry {entry.seq} ({entry.action} {entry.target}) is signed and recorded, "
            "but its effect is pending: the leading `vox-flow control` (the audit outbox) will "
            "finish it within VOX_FLOW_CONTROL_OUTBOX_RETRY_SECONDS. It failed because: "
            f"{why}",
            code="effect_pending",
            status=PENDING,
        )
    if "vox_flow.errors.PayloadError" in names:
        errors: list[tuple[str, str]] = exc.errors  # type: ignore[attr-defined]
        task: str = exc.task  # type: ignore[attr-defined]
        detail = f": {errors[0][0]}: {errors[0][1]}" if len(errors) == 1 else ""
        return CliError(
            f"refused, nothing changed: invalid payload for {task}{detail}",
            code="invalid_payload",
            status=REFUSED,
            fields=errors,
        )
    if names & _NOT_FOUND:
        return CliError(str(exc), code="not_found")
    if isinstance(exc, ModuleNotFoundError) and _is_task_module(exc.name):
        return CliError(
            f"VOX_FLOW_TASK_MODULES: cannot import {exc.name!r}: {exc}",
            code="bad_setting",
            status=REFUSED,
            fields=[("VOX_FLOW_TASK_MODULES", f"cannot import {exc.name!r}")],
        )
    if "redis.exceptions.InvalidResponse" in names:
        return CliError(
            f"the broker{_broker()} did not answer as a Redis server would: {exc}",
            code="broker_unreachable",
        )
    if "redis.exceptions.AuthenticationError" in names:
        return CliError(
            f"the broker{_broker()} refused the login: {_reason(exc)}", code="broker_refused"
        )
    if names & _BROKER_DOWN:
        return CliError(
            f"cannot reach the broker{_broker()}: {_reason(exc)}", code="broker_unreachable"
        )
    if "redis.exceptions.ResponseError" in names:
        return CliError(f"the broker{_broker()} refused a command: {exc}", code="broker_refused")
    if isinstance(exc, ModuleNotFoundError) and exc.name in _DRIVERS:
        return CliError(
            f"the store{_store()} needs the driver {exc.name}, which is not installed: "
            f"{_DRIVERS[exc.name]}",
            code="missing_driver",
        )
    if names & _STORE_DOWN:
        return CliError(
            f"cannot open the store{_store()}: {_reason(exc)}", code="store_unreachable"
        )
    if names & _KNOWN:
        return CliError(str(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return CliError(f"{where}{exc.strerror or exc}")
    return CliError(
        f"unexpected {type(exc).__name__}: {exc} (run `vox-flow --debug …` for the traceback)",
        code="internal",
    )


def _report(error: CliError, as_json: bool) -> int:
    print(f"error: {error.message}", file=sys.stderr)
    if len(error.fields) > 1:  # one field is the message itself
        for field, reason in error.fields:
            print(f"  {field}: {reason}", file=sys.stderr)
    if as_json:
        fields = [{"field": field, "reason": reason} for field, reason in error.fields]
        document = {"code": error.code, "message": error.message, "fields": fields}
        print(json.dumps({"v": 1, "error": document}, indent=2))
    return error.status


def _silence_stdout() -> None:
    # The reader has gone: point stdout at /dev/null so that the interpreter's last flush
    # does not fail again (the recipe of the `signal` module's documentation).
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def run(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Parse ``argv``, run its handler and return the exit code; no exception gets out
    (except with ``--debug``), and none is shown as a traceback."""
    global _now
    _now = _Invocation()
    argv = list(argv)
    as_json = "--json" in argv  # until parsed: a usage error still gets its envelope
    debug = "--debug" in argv[: next((i for i, a in enumerate(argv) if a[:1] != "-"), None)]
    try:
        try:
            args = parser.parse_args(argv)
            as_json = bool(getattr(args, "json", False))
            debug = bool(getattr(args, "debug", debug))
            settings()  # every command's first step: a bad value fails it before anything runs
            code = int(args.handler(args))
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return code
        except (KeyboardInterrupt, BrokenPipeError):
            raise
        except Exception as exc:
            if debug:
                raise
            return _report(translate(exc), as_json)
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    finally:
        _now = _Invocation()
