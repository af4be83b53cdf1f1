"""Standard Webhooks signing and the §11 retry schedule: every signature paycode makes is
accepted by the specification's own library (standardwebhooks), and retries follow 5 s, 5 min,
30 min, 2 h, 5 h, 10 h, 10 h within ±20 %."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from app.webhooks import signing
from models.webhook_queue import RETRY_SCHEDULE, body_bytes, retry_delay
from models.webhooks import new_secret
from tests.strategies import any_text

ANY_TEXT = any_text(max_size=200)


@settings(max_examples=200)
@given(
    data=st.dictionaries(ANY_TEXT, ANY_TEXT | st.integers() | st.none(), max_size=5),
    webhook_id=st.from_regex(r"msg_[0-9A-Z]{26}", fullmatch=True),
)
def test_every_signed_body_verifies_with_the_reference_library(
    data: dict[str, object], webhook_id: str
) -> None:
    """Whatever the event data (any Unicode, lone surrogates included), the body is ASCII
    JSON and standardwebhooks accepts its signature and parses it back to the same data."""
    secret = new_secret()
    body = body_bytes("payment.succeeded", datetime.now(UTC), 1, data)
    headers = signing.headers([secret], webhook_id, int(time.time()), body)
    parsed = Webhook(secret).verify(body, headers)
    # What any JSON reader makes of the data: a lone high surrogate followed by a lone low
    # one are two code points in Python but one escaped pair, so one character, in JSON.
    expected = json.loads(json.dumps(data))
    assert parsed["data"] == expected
    # Data kept as JSON text (SQLite) goes into the body as it is and means the same.
    stored = json.dumps(data)
    assert json.loads(body_bytes("code.paid", None, 2, stored))["data"] == expected


def test_during_a_rotation_either_secret_verifies_and_a_stranger_does_not() -> None:
    """Two space-separated signatures: the old and the new secret each verify; another
    secret, another id or a changed body do not."""
    old, new, stranger = new_secret(), new_secret(), new_secret()
    body = b'{"type":"webhook.test","seq":null,"data":{}}'
    headers = signing.headers([new, old], "msg_1", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new).verify(body.replace(b"null", b"1"), headers)


def test_the_secret_is_whsec_and_base64_of_at_least_24_random_bytes() -> None:
    """Spec §11's form, and no two alike."""
    made = {new_secret() for _ in range(100)}
    assert len(made) == 100
    assert all(s.startswith("whsec_") and len(signing.secret_key(s)) >= 24 for s in made)


def test_retries_follow_the_schedule_within_twenty_percent_then_stop() -> None:
    """After the n-th failed attempt the next comes after the n-th delay ±20 %, spread (not
    all alike); after the 7th retry there is none and the delivery fails."""
    assert RETRY_SCHEDULE == (5, 300, 1800, 7200, 18000, 36000, 36000)
    for attempts, base in enumerate(RETRY_SCHEDULE, start=1):
        delays = [retry_delay(attempts) for _ in range(200)]
        assert all(d is not None and 0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(set(delays)) > 100
    assert retry_delay(len(RETRY_SCHEDULE) + 1) is None
