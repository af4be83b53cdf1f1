"""Webhook secrets never reach a log: a real server at debug level creates, lists, rotates and
delivers (a failing attempt and a successful one), and nothing it printed holds a secret."""

from __future__ import annotations

import time

import httpx

from tests.api import Api
from tests.conftest import ADMIN_TOKEN
from tests.server import logged_server
from tests.webhook_receiver import Receiver, statuses, until


def test_webhook_secrets_stay_out_of_the_log(database_url: str) -> None:
    """Both the first secret and the rotated one are absent from everything logged, while the
    deliveries did happen (one failure, then success)."""
    receiver = Receiver().start()
    receiver.behaviours["logged"] = statuses(500)
    env = {"PAYCODE_LOG_LEVEL": "debug", "PAYCODE_WEBHOOK_ALLOW_PRIVATE": "1"}
    try:
        with (
            logged_server(database_url, ADMIN_TOKEN, extra_env=env) as (base, read_log),
            httpx.Client(base_url=base, timeout=30) as http,
        ):
            api = Api(http, ADMIN_TOKEN)
            me = api.user()
            created = api.post("/webhooks", me, json={"url": receiver.url("logged")}).json()
            api.get("/webhooks", me)
            rotated = api.post(f"/webhooks/{created['id']}/rotate-secret", me).json()
            api.post(f"/webhooks/{created['id']}/test", me)
            until(lambda: len(receiver.of("logged")) == 2, 20, "a failure then a success")
            api.get(f"/webhooks/{created['id']}/deliveries", me)
            time.sleep(0.3)
            output = read_log()
        assert '"paycode.access"' in output
        for secret in (created["secret"], rotated["secret"]):
            assert secret not in output
            assert secret.removeprefix("whsec_") not in output
    finally:
        receiver.stop()
