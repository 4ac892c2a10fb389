"""Reading key material and certificates from files (the edge; the core never reads files).

Private keys are PEM PKCS#8, optionally encrypted with the passphrase in
``$CASEBRIDGE_KEY_PASSPHRASE``. Every failure is a ``ConfigError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from broker.errors import ConfigError

KEY_PASSPHRASE_ENV: Final = "CASEBRIDGE_KEY_PASSPHRASE"  # noqa: S105 - a variable name


def read_bytes(path: Path) -> bytes:
    """The file's bytes, or a ConfigError naming it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An EC private key from a PEM file (passphrase from the environment, if set)."""
    secret = os.environ.get(KEY_PASSPHRASE_ENV, "")
    try:
        key = serialization.load_pem_private_key(
            read_bytes(path), password=secret.encode("utf-8") if secret else None
        )
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: cannot load the private key (passphrase?)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: not an EC private key")
    return key


def read_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    try:
        return x509.load_pem_x509_certificates(read_bytes(path))[0]
    except (ValueError, IndexError):
        raise ConfigError(f"{path}: not a PEM certificate") from None
