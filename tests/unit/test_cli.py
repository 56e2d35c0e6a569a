"""`vox-flow` never shows a user a traceback: every command, run as a user runs it (a
subprocess with a clean environment), with a bad setting, an unreachable broker and an
unreachable store, fails fast in one line that names the variable or the URL.

The commands are found by walking ``build_parser()``, so a new command is run here too; its
expected failures must be added to ``EXPECTED`` (the test says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

import vox_flow
from vox_flow.cli import build_parser, common, main
from vox_flow.config import Settings, setting_errors

DEAD_BROKER = "redis://127.0.0.1:1/0"  # port 1: nothing listens there
DEAD_STORE = "postgresql+psycopg://nobody:secret@127.0.0.1:1/x"
SHOWN_STORE = "postgresql+psycopg://nobody:***@127.0.0.1:1/x"
# Each run is a fresh interpreter on a small shared machine, several at once; the long-running
# commands (worker, dev, control, beat) must fail within this too, not run on.
RUN_TIMEOUT = 20.0

# What each command does with an unreachable broker (case 2; the default SQLite store in an
# empty data dir) and with an unreachable store (case 3; the broker is the session's private
# server for the commands that use a store, unreachable for the others, which would run on):
#   broker: fails naming the broker URL, having created nothing (the broker is checked first)
#   store: fails naming the store URL (password hidden)
#   no_store: fails saying there is no store (and creates none) · ok: succeeds
#   warn: succeeds, warning that the broker is unreachable
EXPECTED: dict[str, tuple[str, str]] = {
    "worker": ("broker", "broker"),
    "dev": ("broker", "broker"),
    "dlq list": ("broker", "broker"),
    "dlq show": ("broker", "broker"),
    "dlq replay": ("broker", "store"),
    "dlq purge": ("broker", "store"),
    "beat": ("broker", "broker"),
    "schedules list": ("warn", "warn"),
    "schedules pause": ("broker", "store"),
    "schedules resume": ("broker", "store"),
    "schedules trigger": ("broker", "store"),
    "schedules reload": ("broker", "broker"),
    "control": ("broker", "store"),
    "audit verify": ("no_store", "store"),
    "audit export": ("no_store", "store"),
    "audit checkpoint": ("no_store", "store"),
    "audit keys": ("no_store", "store"),
    "store migrate": ("ok", "store"),
    "store prune": ("broker", "store"),
}


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """Every runnable command (``"dlq list"``) with the arguments it needs to get past
    argparse: a placeholder for each positional and each required option."""
    found: dict[str, list[str]] = {}
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subparsers:
        for name, child in subparsers[0].choices.items():
            found.update(leaf_commands(child, (*path, name)))
        return found
    args = list(path)
    for action in parser._actions:
        if not action.option_strings and action.nargs in (None, "?"):
            args.append("x")
        elif action.required:
            args += [action.option_strings[0], "x"]
    found[" ".join(path)] = args
    return found


COMMANDS = leaf_commands(build_parser())


@dataclass
class Ran:
    command: str
    returncode: int
    stdout: str
    stderr: str
    data_dir: Path

    @property
    def said(self) -> str:
        return self.stdout + self.stderr


def clean_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any VOX_FLOW_* variable, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOX_FLOW_")}
    env.update(VOX_FLOW_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    env.update({f"VOX_FLOW_{k.upper()}": v for k, v in settings.items()})
    return env


def run_cli(
    args: list[str], data_dir: Path, cwd: Path, timeout: float = RUN_TIMEOUT, **settings: str
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "vox_flow.cli", *args],
            env=clean_env(data_dir, **settings),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        # Not a skip: a command that does not fail fast is the defect this test is about.
        pytest.fail(f"`vox-flow {' '.join(args)}` still ran after {timeout} s: {exc.output!r}")


def run_all(tmp_path: Path, case: str, settings: Callable[[str], dict[str, str]]) -> dict[str, Ran]:
    """Every command with ``settings(command)``, several at once; each in a fresh data dir
    (with an empty schedules dir as its working directory's ``schedules``)."""

    def one(item: tuple[str, list[str]]) -> Ran:
        name, args = item
        home = tmp_path / case / name.replace(" ", "-")
        (home / "schedules").mkdir(parents=True)
        data_dir = home / "data"
        done = run_cli(args, data_dir, home, **settings(name))
        return Ran(name, done.returncode, done.stdout, done.stderr, data_dir)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return {ran.command: ran for ran in pool.map(one, COMMANDS.items())}


def assert_one_line_failure(ran: Ran, status: int) -> None:
    assert "Traceback" not in ran.said, (ran.command, ran.said)
    assert ran.returncode == status, (ran.command, ran.returncode, ran.said)
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, (ran.command, ran.stderr)


def test_every_command_is_classified() -> None:
    assert sorted(COMMANDS) == sorted(EXPECTED), (
        "a command was added or removed: say in EXPECTED how it fails without broker or store"
    )


def test_a_bad_setting_names_the_variable_and_the_reason(tmp_path: Path) -> None:
    bad = {"lease_seconds": "soon", "broker_url": DEAD_BROKER}
    results = run_all(tmp_path, "setting", lambda command: bad)
    for ran in results.values():
        assert_one_line_failure(ran, common.REFUSED)
        assert (
            "error: VOX_FLOW_LEASE_SECONDS: Input should be a valid number, unable to parse "
            "string as a number (got 'soon')"
        ) in ran.stderr, (ran.command, ran.stderr)


def test_an_unreachable_broker_is_named_in_one_line(tmp_path: Path) -> None:
    results = run_all(tmp_path, "broker", lambda command: {"broker_url": DEAD_BROKER})
    broker_down = f"cannot reach the broker at {DEAD_BROKER}: Connection refused"
    for name, ran in results.items():
        expected = EXPECTED[name][0]
        if expected == "broker":
            assert_one_line_failure(ran, common.FAILED)
            assert f"error: {broker_down}" in ran.stderr, (name, ran.stderr)
            assert not (ran.data_dir / "control.db").exists(), f"{name} created a store"
        elif expected == "no_store":
            assert_one_line_failure(ran, common.FAILED)
            db = ran.data_dir / "control.db"
            assert f"error: no store at sqlite:///{db}" in ran.stderr, (name, ran.stderr)
            assert not db.exists(), f"{name} created a store"
        elif expected == "warn":
            assert "Traceback" not in ran.said and ran.returncode == 0, (name, ran.said)
            assert f"warning: {broker_down}" in ran.stderr, (name, ran.stderr)
            assert "no schedules in schedules" in ran.stdout, (name, ran.stdout)
        else:
            assert "Traceback" not in ran.said and ran.returncode == 0, (name, ran.said)


def test_an_unreachable_store_is_named_without_its_password(tmp_path: Path, redis_url: str) -> None:
    def settings(command: str) -> dict[str, str]:
        broker = redis_url if EXPECTED[command][1] == "store" else DEAD_BROKER
        return {"store_url": DEAD_STORE, "broker_url": broker}

    results = run_all(tmp_path, "store", settings)
    for name, ran in results.items():
        assert "secret" not in ran.said, (name, ran.said)
        expected = EXPECTED[name][1]
        if expected == "store":
            assert_one_line_failure(ran, common.FAILED)
            assert f"error: cannot open the store at {SHOWN_STORE}: " in ran.stderr, (
                name,
                ran.stderr,
            )
            assert "Connection refused" in ran.stderr, (name, ran.stderr)
        elif expected == "broker":
            assert_one_line_failure(ran, common.FAILED)
            assert f"cannot reach the broker at {DEAD_BROKER}" in ran.stderr, (name, ran.stderr)
        else:
            assert "Traceback" not in ran.said and ran.returncode == 0, (name, ran.said)


def test_version(tmp_path: Path) -> None:
    done = run_cli(["--version"], tmp_path, tmp_path)
    assert (done.returncode, done.stdout) == (0, f"vox-flow {vox_flow.__version__}\n")


def test_json_errors_are_one_envelope_on_stdout(tmp_path: Path) -> None:
    done = run_cli(["dlq", "list", "--json"], tmp_path, tmp_path, broker_url=DEAD_BROKER)
    assert done.returncode == common.FAILED
    message = f"cannot reach the broker at {DEAD_BROKER}: Connection refused"
    assert json.loads(done.stdout) == {
        "v": 1,
        "error": {"code": "broker_unreachable", "message": message, "fields": []},
    }
    assert done.stderr.splitlines()[-1] == f"error: {message}"

    bad = run_cli(
        ["audit", "keys", "--json"], tmp_path, tmp_path, lease_seconds="0.5", worker_prefetch="0"
    )
    assert bad.returncode == common.REFUSED
    error = json.loads(bad.stdout)["error"]
    assert (error["code"], error["message"]) == ("bad_setting", "2 invalid settings")
    assert error["fields"] == [
        {
            "field": "VOX_FLOW_WORKER_PREFETCH",
            "reason": "Input should be greater than or equal to 1 (got '0')",
        },
        {"field": "VOX_FLOW_LEASE_SECONDS", "reason": "Input should be greater than 1 (got '0.5')"},
    ]
    assert bad.stderr.splitlines() == [
        "error: 2 invalid settings",
        "  VOX_FLOW_WORKER_PREFETCH: Input should be greater than or equal to 1 (got '0')",
        "  VOX_FLOW_LEASE_SECONDS: Input should be greater than 1 (got '0.5')",
    ]

    usage = run_cli(["dlq", "list", "--limit", "many", "--json"], tmp_path, tmp_path)
    assert usage.returncode == common.REFUSED
    assert json.loads(usage.stdout)["error"]["code"] == "usage"
    assert "argument --limit: invalid int value: 'many'" in usage.stderr


def test_counts_out_of_range_are_refused_before_any_work(tmp_path: Path) -> None:
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    for args, message in (
        (["schedules", "list", "--next", "99999999999999999999"], "--next must be between"),
        (["schedules", "list", "--next", "0"], "--next must be between"),
        (["worker", "-Q", ","], "empty queue name"),
    ):
        done = run_cli(
            [*args, "--json"] if args[0] == "schedules" else args,
            tmp_path,
            tmp_path,
            SCHEDULES_DIR=str(schedules),
        )
        assert done.returncode == common.REFUSED, (args, done.stdout, done.stderr)
        assert message in done.stdout + done.stderr
        assert "Traceback" not in done.stderr


def test_input_files_and_text_that_are_not_what_they_should_be(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    missing = tmp_path / "missing.json"
    # Strict JSON (vox_flow.jsonvalue): an integer past 2**53 is refused, named by its path.
    huge_int = tmp_path / "huge_int.json"
    huge_int.write_text('{"id": "i1", "value": ' + "9" * 401 + "}")
    # Read no further than the limit, whatever the file's size (1 MiB + 1 byte here).
    too_big = tmp_path / "too_big.json"
    too_big.write_text('{"id": "' + "x" * (1024 * 1024) + '"}')
    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes(b'{"id": "caf\xe9"}')
    for args, said in [
        (["audit", "verify", "--checkpoint", str(missing)], f"--checkpoint {missing}: No such"),
        (["audit", "verify", "--checkpoint", str(garbage)], "is not a checkpoint: Invalid JSON"),
        (["audit", "verify", "--export", str(garbage), "--keys", str(garbage)], "--keys"),
        (["schedules", "pause", "x", "--reason", "a\udcffb"], "argument --reason: not valid"),
        (["dlq", "replay", "x", "--payload", str(garbage)], f"--payload {garbage}: not JSON"),
        (
            ["dlq", "replay", "x", "--payload", str(huge_int)],
            f"--payload {huge_int} at value: integer of 401 digits is outside",
        ),
        (
            ["dlq", "replay", "x", "--payload", str(too_big)],
            f"--payload {too_big} is larger than 1048576 bytes (1 MiB)",
        ),
        (["dlq", "replay", "x", "--payload", str(not_utf8)], "is not UTF-8 (byte 0xe9"),
    ]:
        done = run_cli(args, tmp_path / "data", tmp_path, broker_url=DEAD_BROKER)
        ran = Ran(" ".join(args[:2]), done.returncode, done.stdout, done.stderr, tmp_path)
        assert_one_line_failure(ran, common.REFUSED)
        assert said in done.stderr, (args, done.stderr)


def test_a_missing_schedules_directory_is_said(tmp_path: Path) -> None:
    done = run_cli(["schedules", "list"], tmp_path / "data", tmp_path, broker_url=DEAD_BROKER)
    ran = Ran("schedules list", done.returncode, done.stdout, done.stderr, tmp_path)
    assert_one_line_failure(ran, common.FAILED)
    assert "error: no schedules directory at schedules (VOX_FLOW_SCHEDULES_DIR)" in done.stderr


def test_a_missing_driver_says_which_extra_to_install(tmp_path: Path) -> None:
    # psycopg is installed here: this interpreter is made to find none, as a fresh install would.
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from vox_flow.cli import main\n"
        "sys.exit(main(['audit', 'verify']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(tmp_path, store_url=DEAD_STORE),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == common.FAILED and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == (
        f"error: the store at {SHOWN_STORE} needs the driver psycopg, which is not installed: "
        "pip install 'vox_flow[postgres]'\n"
    )


# --- in this process: the envelope itself -----------------------------------------------------


def _parser(handler: object) -> argparse.ArgumentParser:
    parser = common.Parser(prog="t")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(handler=handler)
    return parser


def _raise(exc: BaseException) -> object:
    def handler(args: argparse.Namespace) -> int:
        raise exc

    return handler


def test_an_unexpected_error_is_one_line_and_debug_reraises(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert common.run(_parser(_raise(ZeroDivisionError("boom"))), []) == common.FAILED
    said = capsys.readouterr()
    assert said.out == ""
    assert said.err == (
        "error: unexpected ZeroDivisionError: boom (run `vox-flow --debug …` for the traceback)\n"
    )
    with pytest.raises(ZeroDivisionError):
        common.run(_parser(_raise(ZeroDivisionError("boom"))), ["--debug"])


def test_ctrl_c_exits_130_quietly(capsys: pytest.CaptureFixture[str]) -> None:
    assert common.run(_parser(_raise(KeyboardInterrupt())), []) == common.INTERRUPTED
    assert capsys.readouterr() == ("", "")


def test_the_envelope_of_a_failure_with_fields(capsys: pytest.CaptureFixture[str]) -> None:
    error = common.CliError("two\nlines", code="x", status=7, fields=[("a", "1"), ("b", "2")])
    assert common.run(_parser(_raise(error)), ["--json"]) == 7
    said = capsys.readouterr()
    assert said.err == "error: two lines\n  a: 1\n  b: 2\n"
    assert json.loads(said.out) == {
        "v": 1,
        "error": {
            "code": "x",
            "message": "two lines",
            "fields": [{"field": "a", "reason": "1"}, {"field": "b", "reason": "2"}],
        },
    }


def test_setting_errors_name_the_variables() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(lease_seconds="0.5", otel_exporter="jaeger")  # type: ignore[arg-type]
    assert setting_errors(raised.value) == [
        ("VOX_FLOW_LEASE_SECONDS", "Input should be greater than 1 (got '0.5')"),
        ("VOX_FLOW_OTEL_EXPORTER", "Input should be 'none', 'console' or 'otlp' (got 'jaeger')"),
    ]


def test_passwords_are_hidden() -> None:
    assert common.hide_password("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert common.hide_password("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert common.hide_password("redis://h:1/0") == "redis://h:1/0"
    assert common.hide_password("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_the_cli_default_broker_is_the_apps() -> None:
    from vox_flow.app import DEFAULT_BROKER

    assert common.DEFAULT_BROKER == DEFAULT_BROKER


def test_which_broker_a_command_uses_when_the_variable_is_unset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from vox_flow.cli import common\n"
            "from vox_flow.config import Settings\n"
            f"with common.publish_dev_broker(Settings(data_dir={str(tmp_path)!r}), 'redis://dev:7/0'):\n"
            "    print('ready', flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        common._now = common._Invocation(settings=settings)
        assert common.broker_url() == "redis://dev:7/0" and common.broker_from_dev()
        assert capsys.readouterr().err == (
            "using vox-flow dev's broker at redis://dev:7/0 (VOX_FLOW_BROKER_URL is unset)\n"
        )
        holder.kill()  # as SIGKILL would: the file stays, its lock goes
        holder.wait()
        assert common.dev_broker_file(settings).exists()
        common._now = common._Invocation(settings=settings)
        assert common.broker_url() == common.DEFAULT_BROKER and not common.broker_from_dev()
        assert capsys.readouterr().err == (
            f"ignoring {common.dev_broker_file(settings)}: the vox-flow dev that wrote it is "
            f"not running\nusing the default broker {common.DEFAULT_BROKER} "
            "(VOX_FLOW_BROKER_URL is unset)\n"
        )
        common._now = common._Invocation(
            settings=Settings(data_dir=tmp_path, broker_url="redis://x/0")
        )
        assert common.broker_url() == "redis://x/0" and capsys.readouterr().err == ""
    finally:
        common._now = common._Invocation()
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_dev_broker_file_is_removed_when_dev_stops(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with common.publish_dev_broker(settings, "redis://dev:7/0") as path:
        assert path.read_text() == "redis://dev:7/0\n"
    assert not path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == []


def test_main_returns_the_exit_code_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VOX_FLOW_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("VOX_FLOW_STORE_URL", raising=False)
    assert main(["audit", "keys"]) == common.FAILED
    assert capsys.readouterr().err.startswith("error: no store at sqlite:///")
    assert not (tmp_path / "control.db").exists()


def test_help_loads_no_heavy_module() -> None:
    # `vox-flow --help` loads every command module: each keeps its heavy imports in handlers.
    heavy = ("celery", "kombu", "redis", "sqlalchemy", "alembic", "nacl", "pydantic")
    code = (
        "import json, sys\n"
        "from vox_flow.cli import build_parser\n"
        "build_parser().format_help()\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}"
        " or m.startswith(('vox_flow.app', 'vox_flow.config', 'vox_flow.store')))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
