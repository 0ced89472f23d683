"""DKIM keys made in the test, and posts signed with them."""

from __future__ import annotations

import base64

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def dkim_key() -> tuple[bytes, str]:
    """(private key PEM, the DNS TXT record that publishes its public half)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b64 = base64.b64encode(public).decode()
    record = "v=DKIM1; k=rsa; p=" + b64
    return private, " ".join(f'"{record[i : i + 200]}"' for i in range(0, len(record), 200))


def sign(data: bytes, domain: str, key: bytes) -> bytes:
    """``data`` with a DKIM-Signature of ``domain``, selector ``sel``, on top."""
    signature = dkim.sign(
        data, b"sel", domain.encode(), key,
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date"],
    )  # fmt: skip
    return signature + data
