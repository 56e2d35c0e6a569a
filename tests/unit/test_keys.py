"""Key files: created 0600, refused when others can read them, stable across loads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vox_flow.audit.keys import KeyFileError, key_path, load_or_create, signature_ok


def test_key_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = key_path(tmp_path, "node-a")
    first = load_or_create(path, "node-a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create(path, "node-a")
    assert again.public_key == first.public_key and again.key_id == first.key_id
    assert signature_ok(first.public_key, b"m", again.sign(b"m"))
    assert not signature_ok(first.public_key, b"n", again.sign(b"m"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_readable_key_is_refused(tmp_path: Path, mode: int) -> None:
    path = key_path(tmp_path, "node-b")
    load_or_create(path, "node-b")
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create(path, "node-b")


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.key"
    path.write_text("not hex")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="hex seed"):
        load_or_create(path, "x")
