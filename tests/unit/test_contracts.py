"""The JSON Schemas in contracts/ are generated from the wire models and must not drift."""

from __future__ import annotations

import json
from pathlib import Path

from vox_flow.contracts import wire_types
from vox_flow.contracts.__main__ import render

CONTRACTS = Path(__file__).resolve().parents[2] / "contracts"


def test_schemas_on_disk_match_the_models() -> None:
    expected = render()
    on_disk = {path.name: path.read_text() for path in CONTRACTS.glob("*.json")}
    stale = sorted(set(on_disk) - set(expected))
    missing = sorted(set(expected) - set(on_disk))
    changed = sorted(
        name for name in expected if name in on_disk and on_disk[name] != expected[name]
    )
    assert not (stale or missing or changed), (
        f"contracts/ drifted from vox_flow/contracts (stale {stale}, missing {missing}, "
        f"changed {changed}); run: python -m vox_flow.contracts"
    )


def test_index_names_every_wire_type() -> None:
    index = json.loads((CONTRACTS / "index.json").read_text())
    assert [entry["name"] for entry in index["schemas"]] == list(wire_types())
