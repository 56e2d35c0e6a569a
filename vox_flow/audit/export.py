"""Audit exports: JSONL entries plus a keys file, verifiable offline with public keys only."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TextIO

from vox_flow.contracts.audit import AuditEntry, Checkpoint, PublicKey

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path


def write_entries(entries: Iterable[AuditEntry], out: TextIO) -> int:
    """Write one entry per line; returns how many."""
    count = 0
    for entry in entries:
        out.write(entry.model_dump_json() + "\n")
        count += 1
    return count


def read_entries(path: Path) -> Iterator[AuditEntry]:
    """The entries of an export file, in file order."""
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield AuditEntry.model_validate_json(line)


def write_keys(keys: Iterable[PublicKey], path: Path) -> None:
    """Write the public keys (retirements included) as a JSON list."""
    path.write_text(json.dumps([k.model_dump(mode="json") for k in keys], indent=2) + "\n")


def read_keys(path: Path) -> list[PublicKey]:
    """The public keys of a keys file."""
    return [PublicKey.model_validate(k) for k in json.loads(path.read_text())]


def write_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """Write a checkpoint file."""
    path.write_text(checkpoint.model_dump_json(indent=2) + "\n")


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in a checkpoint file."""
    return Checkpoint.model_validate_json(path.read_text())
