"""The audit log: appends chain and sign; verify names exactly the first bad entry."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.unit.conftest_store import NOTE, fill, memo_signature_check, note_effects, sqlite_store
from vox_flow.actions.perform import perform
from vox_flow.audit.body import body_of, entry_body
from vox_flow.audit.keys import Signer, signature_ok
from vox_flow.audit.log import AuditError, AuditLog, verify_inclusion_proof
from vox_flow.audit.merkle import ProofError
from vox_flow.audit.verify import _Checker, verify_entries, verify_store
from vox_flow.cli import main
from vox_flow.contracts.audit import AuditEntry, Checkpoint, PublicKey
from vox_flow.store import Store

N = 10_000
SIGNER = Signer.generate("control")


class Log:
    """The 10^4-entry log, its keys and a checkpoint of its full size, held in memory."""

    def __init__(self, entries: list[AuditEntry], keys: list[PublicKey], cp: Checkpoint) -> None:
        self.entries, self.keys, self.checkpoint = entries, keys, cp
        self.check = memo_signature_check()

    def first_bad(self, entries: list[AuditEntry], with_checkpoint: bool = False) -> int | None:
        report = verify_entries(
            entries,
            self.keys,
            checkpoints=[self.checkpoint] if with_checkpoint else [],
            workers=1,
            check_signature=self.check,
        )
        assert report.ok is (report.problem is None)
        return None if report.problem is None else report.problem.seq


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    store = sqlite_store(tmp_path_factory.mktemp("audit"), checkpoint_every=1000)
    fill(store, SIGNER, N, batch=1000)
    audit = AuditLog(store)
    built = Log(list(audit.entries()), audit.keys(), audit.checkpoints()[-1])
    assert built.checkpoint.size == N
    assert built.first_bad(built.entries, with_checkpoint=True) is None  # warms the memo
    return built


def _flip_hex(value: str, index: int) -> str:
    raw = bytearray(bytes.fromhex(value))
    raw[index % len(raw)] ^= 1 << (index % 8)
    return raw.hex()


def _flip_text(value: str, index: int) -> str:
    i = index % len(value)
    return value[:i] + chr(ord(value[i]) ^ 1) + value[i + 1 :]


_seq = st.integers(1, N)
_few = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_few
@given(_seq, st.integers(0, 10_000), st.sampled_from(["payload", "prev_hash", "signature"]))
def test_flipped_byte_is_named(log: Log, seq: int, at: int, field: str) -> None:
    entries = list(log.entries)
    old = entries[seq - 1]
    flip = _flip_text if field == "payload" else _flip_hex
    entries[seq - 1] = old.model_copy(update={field: flip(getattr(old, field), at)})
    assert log.first_bad(entries) == seq


@_few
@given(st.integers(1, N - 1))
def test_deleted_entry_is_named(log: Log, seq: int) -> None:
    entries = log.entries[: seq - 1] + log.entries[seq:]
    assert log.first_bad(entries) == seq


@_few
@given(st.integers(1, N), st.integers(1, N))
def test_swapped_entries_are_named(log: Log, a: int, b: int) -> None:
    assume(a != b)
    entries = list(log.entries)
    entries[a - 1], entries[b - 1] = entries[b - 1], entries[a - 1]
    assert log.first_bad(entries) == min(a, b)


@_few
@given(st.integers(1, N), st.booleans())
def test_inserted_forgery_is_named(log: Log, seq: int, claim_real_key: bool) -> None:
    """A forger knows everything but the private key: either they sign with their own
    (unregistered) key, or they name the real key id and cannot make its signature."""
    forger = Signer.generate("mallory")
    prev = log.entries[seq - 2].entry_hash if seq > 1 else "0" * 64
    template = log.entries[seq - 1]
    key_id = SIGNER.key_id if claim_real_key else forger.key_id
    fields = template.model_dump() | {"prev_hash": prev, "key_id": key_id, "actor": "mallory"}
    body = entry_body(**{k: fields[k] for k in (
        "seq", "time", "actor", "action", "target", "reason", "payload_digest", "prev_hash",
        "key_id")})  # fmt: skip
    forged = AuditEntry(
        **fields | {"entry_hash": hashlib.sha256(body).hexdigest(), "signature": forger.sign(body)}
    )
    shifted = [e for e in log.entries[seq - 1 :]]
    entries = [*log.entries[: seq - 1], forged, *shifted]
    assert log.first_bad(entries) == seq


@_few
@given(st.integers(1, 500))
def test_dropped_tail_is_named_against_a_checkpoint(log: Log, m: int) -> None:
    entries = log.entries[: N - m]
    assert log.first_bad(entries) is None  # a cut tail looks fine without a checkpoint...
    assert log.first_bad(entries, with_checkpoint=True) == N - m + 1  # ...and not with one


def test_recomputed_body_is_what_was_signed(log: Log) -> None:
    entry = log.entries[41]
    assert hashlib.sha256(body_of(entry)).hexdigest() == entry.entry_hash


def test_inclusion_and_consistency_proofs_from_the_store(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    fill(store, SIGNER, 37, batch=10)
    audit = AuditLog(store)
    root = audit.head().root_hash
    for seq in (1, 17, 37):
        verify_inclusion_proof(audit.inclusion_proof(seq, 37), root)
    wrong = audit.inclusion_proof(5, 37).model_copy(update={"seq": 6})
    with pytest.raises(ProofError):
        verify_inclusion_proof(wrong, root)
    cp = audit.checkpoint(_registered(audit, SIGNER))
    fill(store, SIGNER, 20)
    from vox_flow.audit.log import verify_consistency_proof

    proof = audit.consistency_proof(cp.size, 57)
    verify_consistency_proof(proof, cp.root_hash, audit.head().root_hash)
    with pytest.raises(ProofError):
        verify_consistency_proof(proof, audit.head().root_hash, cp.root_hash)


def _registered(audit: AuditLog, signer: Signer) -> Signer:
    audit.register(signer)
    return signer


def _tampered_store(tmp_path: Path, sql: str) -> Store:
    store = sqlite_store(tmp_path)
    fill(store, SIGNER, 60, batch=7)
    assert verify_store(store).ok
    with store.write() as conn:
        conn.exec_driver_sql(sql)
    return store


@pytest.mark.parametrize(
    ("sql", "seq", "reason"),
    [
        ("UPDATE audit_entries SET payload = '{\"i\": 99}' WHERE seq = 23", 23, "payload"),
        ("UPDATE audit_entries SET reason = 'nothing' WHERE seq = 9", 9, "entry_hash"),
        ("DELETE FROM audit_entries WHERE seq = 40", 40, "expected entry 40"),
        ("DELETE FROM audit_entries WHERE seq > 55", 56, "missing"),
        ("UPDATE audit_keys SET retired_after_seq = 30", 31, "retired"),
    ],
)
def test_verify_store_names_tampering(tmp_path: Path, sql: str, seq: int, reason: str) -> None:
    report = verify_store(_tampered_store(tmp_path, sql))
    assert not report.ok and report.problem is not None
    assert report.problem.seq == seq and reason in report.problem.reason


@pytest.fixture(scope="module")
def chunked_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5,000-entry store: five chunks, so verify spreads them over worker processes."""
    path = tmp_path_factory.mktemp("chunked")
    store = sqlite_store(path)
    fill(store, SIGNER, 5000, batch=1000)
    store.dispose()  # the last connection to close folds the WAL into the file we copy
    return path / "control.db"


def _copy_store(db: Path, tmp_path: Path, *sql: str) -> Store:
    shutil.copy(db, tmp_path / "control.db")
    store = sqlite_store(tmp_path)
    with store.write() as conn:
        for statement in sql:
            conn.exec_driver_sql(statement)
    return store


# Changes the signature's first byte whatever it was: writing a fixed '00' would leave the
# one signature in 256 that already starts with 00 untouched (a test that passed by luck).
_SIG_FLIP = (
    "UPDATE audit_entries SET signature = "
    "(CASE WHEN substr(signature, 1, 2) = '00' THEN 'ff' ELSE '00' END) || substr(signature, 3) "
    "WHERE seq = {}"
)


@pytest.mark.parametrize(
    ("sql", "seq", "reason"),
    [
        ([_SIG_FLIP.format(4500), "UPDATE audit_entries SET reason = 'x' WHERE seq = 2100"],
         2100, "entry_hash"),
        ([_SIG_FLIP.format(1500), "DELETE FROM audit_entries WHERE seq = 3000"],
         1500, "signature"),
        (["DELETE FROM audit_entries WHERE seq = 1200", _SIG_FLIP.format(3500)],
         1200, "expected entry 1200"),
        ([_SIG_FLIP.format(1025), _SIG_FLIP.format(1024)], 1024, "signature"),
        (["UPDATE audit_entries SET entry_hash = 'zz' WHERE seq = 3001"], 3001, "entry_hash"),
        (["UPDATE audit_entries SET payload = '{}' WHERE seq = 4999",
          "UPDATE audit_entries SET entry_hash = 'zz' WHERE seq = 4999"], 4999, "payload"),
        (["DELETE FROM audit_entries WHERE seq > 4990"], 4991, "missing"),
    ],
)  # fmt: skip
def test_parallel_verify_names_the_first_bad_entry(
    chunked_db: Path, tmp_path: Path, sql: list[str], seq: int, reason: str
) -> None:
    """Worker processes check chunks out of order; the report is still the first failure,
    with the reason a one-by-one pass gives."""
    store = _copy_store(chunked_db, tmp_path, *sql)
    parallel, inline = verify_store(store, workers=2), verify_store(store, workers=1)
    assert parallel.problem is not None and parallel.problem.seq == seq
    assert reason in parallel.problem.reason
    assert parallel.problem == inline.problem


def test_parallel_verify_of_a_sound_log(chunked_db: Path, tmp_path: Path) -> None:
    store = _copy_store(chunked_db, tmp_path)
    parallel, inline = verify_store(store, workers=2), verify_store(store, workers=1)
    assert parallel.ok and parallel == inline and parallel.entries == 5000


# Run apart: this test process may hold threads of its own (earlier tests', telemetry's).
_POOL_KIND = """
from vox_flow.audit.keys import signature_ok
from vox_flow.audit.verify import _Checker
import threading
assert threading.active_count() == 1
pool = _Checker({}, signature_ok, 2)._start()
print(type(pool).__name__)
pool.shutdown()
"""


def test_workers_are_processes_only_without_threads() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _POOL_KIND], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["ProcessPoolExecutor"], done.stderr
    checker = _Checker({}, signature_ok, 2)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        pool = checker._start()
        assert isinstance(pool, ThreadPoolExecutor)  # forking now could copy a held lock
        pool.shutdown()
    finally:
        stop.set()
        other.join()


def test_retired_key_cannot_append_and_later_entries_are_rejected(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    fill(store, SIGNER, 5)
    effects = note_effects()
    entry = perform(store, SIGNER, effects, actor="bob", action="key.retire",
                    target=SIGNER.key_id, reason="rotated")  # fmt: skip
    with pytest.raises(AuditError, match="retired"):
        perform(store, SIGNER, effects, actor="bob", action=NOTE, target="x", reason="late")
    keys = AuditLog(store).keys()
    assert keys[0].retired_after_seq == entry.seq == 6
    assert verify_store(store).ok  # entries up to the retirement itself stay valid


def test_unregistered_key_cannot_append(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    with pytest.raises(AuditError, match="not registered"):
        perform(store, Signer.generate("x"), note_effects(), actor="a", action=NOTE,
                target="t", reason="r")  # fmt: skip


def test_periodic_checkpoints_match_the_log(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path, checkpoint_every=10)
    fill(store, SIGNER, 35, batch=4)
    assert [cp.size for cp in AuditLog(store).checkpoints()] == [10, 20, 30]
    assert verify_store(store, workers=2).ok


class _Cli:
    """``vox-flow audit …`` run in this process, with the data dir set through the env."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
        self.monkeypatch, self.capsys = monkeypatch, capsys

    def __call__(self, data_dir: Path, *args: str) -> tuple[int, str]:
        self.monkeypatch.setenv("VOX_FLOW_DATA_DIR", str(data_dir))
        self.monkeypatch.delenv("VOX_FLOW_STORE_URL", raising=False)
        code = main(["audit", *args])
        captured = self.capsys.readouterr()
        return code, captured.out + captured.err


def test_cli_verify_export_and_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cli = _Cli(monkeypatch, capsys)
    data = tmp_path / "data"
    store = Store(f"sqlite:///{data / 'control.db'}")
    fill(store, SIGNER, 30)
    cp_file, out, keys = tmp_path / "cp.json", tmp_path / "log.jsonl", tmp_path / "keys.json"
    assert _cli(data, "checkpoint", "--out", str(cp_file))[0] == 0
    assert _cli(data, "export", "--out", str(out), "--keys-out", str(keys))[0] == 0
    offline = ("--keys", str(keys), "--checkpoint", str(cp_file))
    code, said = _cli(data, "verify", "--export", str(out), *offline)
    assert code == 0, said
    assert _cli(data, "export", "--since", "12", "--out", str(tmp_path / "tail.jsonl"))[0] == 0
    code, said = _cli(data, "verify", "--export", str(tmp_path / "tail.jsonl"), *offline)
    assert code == 0 and "19 entries (12..30)" in said, said
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-3]) + "\n")  # cut the tail of the export
    code, said = _cli(data, "verify", "--export", str(out), *offline)
    assert code == 1 and "FAILED at entry 28" in said, said
    with store.write() as conn:
        conn.exec_driver_sql("UPDATE audit_entries SET actor = 'eve' WHERE seq = 7")
    code, said = _cli(data, "verify")
    assert code == 1 and "FAILED at entry 7" in said, said


def test_unknown_action_writes_nothing(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    AuditLog(store).register(SIGNER)
    from vox_flow.actions.perform import UnknownAction

    with pytest.raises(UnknownAction):
        perform(store, SIGNER, note_effects(), actor="a", action="nope", target="t", reason="r")
    assert AuditLog(store).head().size == 0
