"""Standard Webhooks signatures (https://www.standardwebhooks.com/): ``v1,`` + base64 of
HMAC-SHA256 over ``{webhook-id}.{webhook-timestamp}.{body}``, keyed with the secret's decoded
bytes; several signatures are separated by spaces."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterable
from functools import lru_cache

from models.webhooks import SECRET_PREFIX


@lru_cache(maxsize=1024)
def secret_key(secret: str) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    message = f"{webhook_id}.{timestamp}.".encode() + body
    # hmac.digest: OpenSSL's one-shot HMAC, without building an HMAC object per signature.
    digest = hmac.digest(secret_key(secret), message, "sha256")
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Iterable[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    return " ".join(sign(s, webhook_id, timestamp, body) for s in secrets)


def headers(secrets: Iterable[str], webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, webhook_id, timestamp, body),
    }
