"""Signed payment receipts: proof of a payment that anyone can check offline (spec §7).

A receipt signs the canonical JSON of a payment's facts with the platform's Ed25519 key.
Keys live in the ``receipt_key`` table: one generated at first start, or the one given by
``PAYCODE_RECEIPT_KEY`` (base64url of the raw 32-byte private key; only its public half is
stored). Rotation adds a new key and retires the old one from signing; old public keys stay
listed, so old receipts keep verifying.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from sqlmodel import Field, Session, SQLModel, select

from models.clock import rfc3339, utcnow


class ReceiptKeyError(ValueError):
    """The configured receipt key is unusable; the message says why."""


class ReceiptKey(SQLModel, table=True):
    __tablename__ = "receipt_key"

    key_id: str = Field(primary_key=True, max_length=40)
    public_key: str = Field(max_length=64)
    # Null for a key given by PAYCODE_RECEIPT_KEY: its private half never touches the database.
    private_key: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    retired_at: datetime | None = Field(default=None)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """Decode base64url with or without padding; ValueError if it is not base64url."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url text") from exc


def canonical(facts: dict[str, Any]) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces: one byte string per set of facts."""
    return json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def key_id_of(public_raw: bytes) -> str:
    # Derived from the public key, so every instance given one key names it the same way.
    return "rk_" + b64url(hashlib.sha256(public_raw).digest())[:16]


def parse_private_key(text: str) -> Ed25519PrivateKey:
    try:
        raw = unb64url(text.strip())
    except ValueError as exc:
        raise ReceiptKeyError("PAYCODE_RECEIPT_KEY must be base64url text") from exc
    if len(raw) != 32:
        raise ReceiptKeyError(
            "PAYCODE_RECEIPT_KEY must be the base64url of a raw 32-byte Ed25519 private key"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def generate_private_key_text() -> str:
    """A fresh private key in the PAYCODE_RECEIPT_KEY format."""
    return b64url(_raw_private(Ed25519PrivateKey.generate()))


@dataclass(frozen=True)
class Signer:
    key_id: str
    private: Ed25519PrivateKey

    def sign(self, facts: dict[str, Any]) -> dict[str, str]:
        payload = canonical(facts)
        return {
            "payload": b64url(payload),
            "signature": b64url(self.private.sign(payload)),
            "key_id": self.key_id,
        }


def _add_key(session: Session, private: Ed25519PrivateKey, *, store_private: bool) -> ReceiptKey:
    public_raw = _raw_public(private)
    row = ReceiptKey(
        key_id=key_id_of(public_raw),
        public_key=b64url(public_raw),
        private_key=b64url(_raw_private(private)) if store_private else None,
    )
    session.add(row)
    session.flush()
    return row


def current_signer(session: Session, configured: str | None) -> Signer:
    """The key that signs new receipts; makes (or registers) it on first use.

    With ``configured`` (PAYCODE_RECEIPT_KEY) that key signs and its public half is recorded;
    otherwise the newest stored, unretired key signs, and one is generated if there is none.
    """
    if configured is not None:
        private = parse_private_key(configured)
        key_id = key_id_of(_raw_public(private))
        row = session.get(ReceiptKey, key_id)
        if row is None:
            _add_key(session, private, store_private=False)
        elif row.retired_at is not None:
            row.retired_at = None
            session.add(row)
        return Signer(key_id, private)
    row = session.exec(
        select(ReceiptKey)
        .where(ReceiptKey.private_key.is_not(None), ReceiptKey.retired_at.is_(None))  # type: ignore[union-attr]
        .order_by(ReceiptKey.created_at.desc())  # type: ignore[attr-defined]
        .limit(1)
    ).first()
    if row is None:
        row = _add_key(session, Ed25519PrivateKey.generate(), store_private=True)
    assert row.private_key is not None
    return Signer(row.key_id, Ed25519PrivateKey.from_private_bytes(unb64url(row.private_key)))


def rotate(session: Session) -> ReceiptKey:
    """Generate a new stored signing key and retire the others from signing (not from
    verifying). A key given by PAYCODE_RECEIPT_KEY is rotated by changing that setting."""
    now = utcnow()
    for row in session.exec(select(ReceiptKey).where(ReceiptKey.retired_at.is_(None))).all():  # type: ignore[union-attr]
        row.retired_at = now
        session.add(row)
    return _add_key(session, Ed25519PrivateKey.generate(), store_private=True)


def key_view(row: ReceiptKey) -> dict[str, Any]:
    return {
        "key_id": row.key_id,
        "public_key": row.public_key,
        "created_at": rfc3339(row.created_at),
    }


def list_keys(session: Session) -> list[ReceiptKey]:
    return list(
        session.exec(select(ReceiptKey).order_by(ReceiptKey.created_at.desc())).all()  # type: ignore[attr-defined]
    )


def verified_facts(session: Session, receipt: Any) -> dict[str, Any] | None:
    """The signed facts of a receipt whose signature checks out with a known key, else None."""
    if not isinstance(receipt, dict):
        return None
    payload_text = receipt.get("payload")
    signature_text = receipt.get("signature")
    key_id = receipt.get("key_id")
    if not all(isinstance(v, str) and 0 < len(v) <= 4096 for v in (payload_text, signature_text)):
        return None
    if not isinstance(key_id, str) or not 0 < len(key_id) <= 40:
        return None
    row = session.get(ReceiptKey, key_id)
    if row is None:
        return None
    try:
        payload = unb64url(payload_text)
        signature = unb64url(signature_text)
        Ed25519PublicKey.from_public_bytes(unb64url(row.public_key)).verify(signature, payload)
        facts = json.loads(payload.decode("utf-8"))
    except (ValueError, InvalidSignature):
        return None
    return facts if isinstance(facts, dict) else None
