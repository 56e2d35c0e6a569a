"""Ed25519 signing keys: one per node and one for the control service.

A key lives in ``<data_dir>/keys/<name>.key`` as the hex of its 32-byte seed, created with
mode 0600 on first use. A key file that the group or others can read is refused: a signature
proves who acted only as long as nobody else could read the key.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.exceptions
import nacl.signing

if TYPE_CHECKING:
    from pathlib import Path

CONTROL_KEY = "control"


class KeyFileError(RuntimeError):
    """A key file is unsafe or unreadable."""


def key_id_of(public_key: bytes) -> str:
    """The id a public key is registered under: 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """A private key that signs audit entries and checkpoints."""

    owner: str
    signing_key: nacl.signing.SigningKey

    @cached_property
    def public_key(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return bytes(self.signing_key.verify_key)

    @cached_property
    def public_key_hex(self) -> str:
        """The public key as registered (hex)."""
        return self.public_key.hex()

    @cached_property
    def key_id(self) -> str:
        """This key's registered id."""
        return key_id_of(self.public_key)

    def sign(self, message: bytes) -> str:
        """Hex Ed25519 signature of ``message``."""
        return self.signing_key.sign(message).signature.hex()

    @classmethod
    def generate(cls, owner: str) -> Signer:
        """A fresh in-memory key (tests, benchmarks)."""
        return cls(owner, nacl.signing.SigningKey.generate())


def signature_ok(public_key: bytes, message: bytes, signature_hex: str) -> bool:
    """True when ``signature_hex`` is a valid Ed25519 signature of ``message``."""
    try:
        signature = bytes.fromhex(signature_hex)
    except ValueError:
        return False
    if len(signature) != 64:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


def check_key_file(path: Path) -> None:
    """Raise :class:`KeyFileError` unless ``path`` is a regular file only its owner can read."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f"key file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise KeyFileError(
            f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}: the group or others "
            f"can reach it, so it is refused; fix it with `chmod 600 {path}` if it was not "
            "read, otherwise retire the key"
        )


def load_or_create(path: Path, owner: str) -> Signer:
    """Load the key at ``path``, creating it (mode 0600, directory 0700) on first use."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Write a private temporary file, then link it into place: the key appears whole or
        # not at all, and of two processes starting at once exactly one key wins.
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(os.urandom(32).hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    check_key_file(path)
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except ValueError as error:
        raise KeyFileError(f"key file {path} does not hold a hex seed") from error
    if len(seed) != 32:
        raise KeyFileError(f"key file {path} holds {len(seed)} bytes, not a 32-byte seed")
    return Signer(owner, nacl.signing.SigningKey(seed))


def key_path(data_dir: Path, name: str) -> Path:
    """Where the key called ``name`` lives under ``data_dir``."""
    return data_dir / "keys" / f"{name}.key"
