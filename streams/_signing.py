"""Ed25519 signatures for model announcements (keys made by ``hive keys``).

The distiller holds the private key; agents pin the public key and refuse any model pointer
whose signature does not verify. Keys are files: the private key as PKCS#8 PEM (mode 0600),
the public key as one line of base64 (raw 32 bytes), easy to pass in an environment variable.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(ValueError):
    """A signature is missing, malformed, or does not verify with the pinned key."""


def generate_keys(directory: str | Path, name: str = "distiller") -> tuple[Path, Path]:
    """Write ``<name>.key`` (private, 0600) and ``<name>.pub`` (public, base64) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = d / f"{name}.key"
    pub = d / f"{name}.pub"
    if priv.exists():
        raise FileExistsError(f"{priv} exists; refusing to overwrite a signing key")
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub.write_text(base64.b64encode(raw).decode() + "\n")
    return priv, pub


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The signing key from a PEM file made by :func:`generate_keys`."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(value: str | Path) -> Ed25519PublicKey:
    """A pinned public key: a ``.pub`` file path, or the base64 text itself."""
    text = str(value)
    p = Path(text)
    if len(text) < 4096 and p.exists():
        text = p.read_text()
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise SignatureError(f"not an Ed25519 public key: {e}") from None


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Base64 Ed25519 signature of ``data``."""
    return base64.b64encode(key.sign(data)).decode()


def verify(key: Ed25519PublicKey, data: bytes, signature: str) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is a valid signature of ``data``."""
    if not signature:
        raise SignatureError("missing signature")
    try:
        key.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify with the pinned public key") from None
