"""Fuzzing the HTTP API against its own /openapi.json with schemathesis: every documented
operation, with the bearer token of an account that has money, an agency and codes, gets
valid and invalid generated requests (random ids and the account's real ones); no answer may
be a 5xx, use an undocumented status code, or break the documented body schema."""

from __future__ import annotations

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api import Api
from tests.conftest import ADMIN_TOKEN
from tests.server import running_server

# Per operation: enough to reach each field's edge cases, few enough for ~40 s on both databases.
EXAMPLES = 60
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Log-outs revoke the token the others use, so they run last.
LAST = ("DELETE /devices/{device_id}", "DELETE /sessions/current")


def real_ids(base_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """A funded account with an agency, codes and a payment: its auth header and its ids."""
    with httpx.Client(base_url=base_url, timeout=10) as http:
        api = Api(http, ADMIN_TOKEN)
        me, agent, payer = api.user(funds=1_000_000), api.user(), api.user(funds=1_000_000)
        agency = api.agency(me, agent, can_refund=True)
        code = api.code(me, agency["id"])
        static = api.code(me, agency["id"], kind="static")
        paid = api.post("/payments", payer, json={"code": static["token"], "amount": 500})
        assert paid.status_code == 201
        spare = api.log_in(me.handle, "spare")
        # Port 9 (discard) refuses: the delivery stays pending, retried in the background.
        hook = api.post("/webhooks", me, json={"url": "http://127.0.0.1:9/hook"})
        assert hook.status_code == 201, hook.text
        delivery = api.post(f"/webhooks/{hook.json()['id']}/test", me)
        assert delivery.status_code == 202, delivery.text
        return me.headers, {
            "handle": agent.handle,
            "agency_id": agency["id"],
            "code_id": code["id"],
            "code": code["short_code"],
            "payment_id": paid.json()["id"],
            "device_id": spare.device_id,
            "webhook_id": hook.json()["id"],
            "delivery_id": delivery.json()["id"],
        }


def fuzz(operation: object, base_url: str, headers: dict[str, str], ids: dict[str, str]) -> int:
    """Run the operation's examples; returns how many requests were made."""
    names = [p.name for p in operation.path_parameters]  # type: ignore[attr-defined]
    strategies = [
        operation.as_strategy(GenerationMode.POSITIVE),  # type: ignore[attr-defined]
        operation.as_strategy(GenerationMode.NEGATIVE),  # type: ignore[attr-defined]
    ]
    if names:
        known = {name: ids[name] for name in names}
        strategies.append(operation.as_strategy(path_parameters=known))  # type: ignore[attr-defined]
    session = requests.Session()
    calls = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def run(case: schemathesis.Case) -> None:
        # Generated headers may name their own Authorization; ours wins, so each case is
        # tried as the logged-in account.
        response = case.call(base_url=base_url, session=session, headers=headers)
        calls.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    return len(calls)


def test_every_route_conforms_to_the_openapi_document(database_url: str) -> None:
    """Each operation of /openapi.json, fuzzed with valid and invalid data as a logged-in
    account holding money, an agency and codes: zero 5xx, zero undocumented statuses, zero
    bodies or content types that break the document."""
    # Private webhook targets allowed: the real endpoint above points at 127.0.0.1.
    private = {"PAYCODE_WEBHOOK_ALLOW_PRIVATE": "1"}
    with running_server(database_url, ADMIN_TOKEN, extra_env=private) as base:
        headers, ids = real_ids(base)
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        operations.sort(
            key=lambda op: (op.label in LAST, LAST.index(op.label) if op.label in LAST else 0)
        )
        assert len(operations) >= 25
        failures: list[str] = []
        calls = 0
        for operation in operations:
            try:
                calls += fuzz(operation, f"{base}/api/v1", headers, ids)
            except Exception as exc:  # one report for all operations
                failures.append(f"{operation.label}: {str(exc)[:1500]}")
        assert not failures, "\n\n".join(failures)
        assert calls >= len(operations) * EXAMPLES // 2


pytestmark = pytest.mark.slow
