"""Wire types of the signed audit log: entries, keys, checkpoints, proofs, verify reports."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_HEX64 = r"^[0-9a-f]{64}$"


class AuditEntry(BaseModel):
    """One signed, hash-chained record of an operator action."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1, description="Position in the log, from 1, with no gaps.")
    time: datetime = Field(description="When the entry was appended (UTC, microseconds).")
    actor: str = Field(description="Who asked for the action (operator or service).")
    action: str = Field(description="The action's registered name, e.g. `dlq.purge`.")
    target: str = Field(description="What the action was applied to.")
    reason: str = Field(description="Why, as the actor gave it.")
    payload: str = Field(description="The action's parameters, as canonical JSON text.")
    payload_digest: str = Field(description="Hex SHA-256 of `payload`.")
    prev_hash: str = Field(description="`entry_hash` of the entry before (64 zeros for seq 1).")
    entry_hash: str = Field(description="Hex SHA-256 of the entry's canonical signed body.")
    key_id: str = Field(description="Id of the Ed25519 key that signed the entry.")
    signature: str = Field(description="Hex Ed25519 signature of the canonical signed body.")

    def payload_data(self) -> Any:
        """The payload, parsed."""
        return json.loads(self.payload)


class PublicKey(BaseModel):
    """A registered Ed25519 public key."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    public_key: str = Field(pattern=_HEX64, description="Hex of the 32-byte public key.")
    owner: str = Field(description="The node or service holding the private key.")
    registered_at: datetime
    retired_at: datetime | None = None
    retired_after_seq: int | None = Field(
        default=None, description="Entries after this sequence number signed by it are invalid."
    )


class Checkpoint(BaseModel):
    """A signed tree head: the log had ``size`` entries with this Merkle root and head."""

    model_config = ConfigDict(frozen=True)

    size: int = Field(ge=0)
    root_hash: str = Field(pattern=_HEX64, description="RFC 9162 Merkle tree head (hex).")
    head_hash: str = Field(description="`entry_hash` of entry `size` (64 zeros when empty).")
    time: datetime
    key_id: str
    signature: str


class InclusionProof(BaseModel):
    """RFC 9162 inclusion proof of one entry in the tree of ``tree_size`` entries."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(ge=1)
    tree_size: int = Field(ge=1)
    entry_hash: str
    path: list[str]


class ConsistencyProof(BaseModel):
    """RFC 9162 consistency proof: the tree of ``size1`` is a prefix of ``size2``'s."""

    model_config = ConfigDict(frozen=True)

    size1: int = Field(ge=0)
    size2: int = Field(ge=0)
    path: list[str]


class AuditProblem(BaseModel):
    """The first thing found wrong with a log."""

    model_config = ConfigDict(frozen=True)

    seq: int | None = Field(description="The first bad entry (its expected position).")
    reason: str


class VerifyReport(BaseModel):
    """The outcome of verifying a log (or an export of one)."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    first_seq: int
    entries: int
    head_hash: str
    root_hash: str | None = Field(description="Merkle root, when the log starts at entry 1.")
    problem: AuditProblem | None = None


WIRE: tuple[type[BaseModel], ...] = (
    AuditEntry,
    PublicKey,
    Checkpoint,
    InclusionProof,
    ConsistencyProof,
    AuditProblem,
    VerifyReport,
)
