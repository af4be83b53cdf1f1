"""/metrics counts each committed payment and refund once — replays of an Idempotency-Key
and failed attempts add nothing."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api import Api


def sample(api: Api, name: str, **labels: str) -> float:
    text = api.client.get("/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                total += item.value
    return total


def test_payments_and_refunds_are_counted_once_each(api: Api) -> None:
    """A dynamic-code payment, its replay, a failed payment and a refund move the counters by
    exactly one payment and one refund."""
    payee, agent, payer = api.user(), api.user(), api.user(funds=5_000)
    agency = api.agency(payee, agent)
    code = api.post(
        "/codes", agent, json={"agency_id": agency["id"], "kind": "dynamic", "amount": 700}
    ).json()
    before_pay = sample(api, "paycode_payments_total", kind="dynamic")
    before_refund = sample(api, "paycode_refunds_total")
    headers = {"Idempotency-Key": "metrics-once"}
    first = api.post("/payments", payer, json={"code": code["token"]}, headers=headers)
    assert first.status_code == 201, first.text
    replay = api.post("/payments", payer, json={"code": code["token"]}, headers=headers)
    assert replay.json() == first.json()
    assert api.post("/payments", payer, json={"code": code["token"]}).status_code == 409
    refund = api.post(f"/payments/{first.json()['id']}/refunds", payee, json={"amount": 100})
    assert refund.status_code == 201, refund.text
    assert sample(api, "paycode_payments_total", kind="dynamic") == before_pay + 1
    assert sample(api, "paycode_refunds_total") == before_refund + 1
