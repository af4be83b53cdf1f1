"""The bearer-token cache: a request with a known token reads no database, and a revoked
device is refused at once on its own process and after one relay sweep when the revocation
came from elsewhere with its broadcast lost."""

from __future__ import annotations

from starlette.testclient import TestClient

from app.main import create_app
from app.relay import read_marks, sweep_tokens
from app.settings import Settings
from app.state import AppState
from models import accounts
from models.sql import IN_CHUNK
from tests.api import Api
from tests.conftest import ADMIN_TOKEN


def _app(database_url: str) -> TestClient:
    # No relay tick during the test: the sweep runs when the test says so.
    settings = Settings(
        database_url=database_url, admin_token=ADMIN_TOKEN, extra={"relay_interval": 3600}
    )
    return TestClient(create_app(settings, migrate_schema=False))


def test_a_cached_token_is_served_until_the_sweep_finds_its_device_revoked(
    database_url: str,
) -> None:
    """A device revoked in the database behind this process's back (another instance whose
    broadcast was lost) is still served from the cache — proof that no read happens — until
    the relay's sweep re-reads the cached devices; then it is 401 and the other device is
    still served."""
    with _app(database_url) as client:
        api = Api(client, ADMIN_TOKEN)
        phone = api.user()
        tablet = api.log_in(phone.handle, "tablet")
        state: AppState = client.app.state.paycode  # type: ignore[attr-defined]
        assert api.get("/me", tablet).status_code == 200
        assert api.get("/me", phone).status_code == 200
        with state.db.write() as session:
            accounts.revoke_device(session, tablet.account_id, tablet.device_id)
        assert api.get("/me", tablet).status_code == 200
        assert sweep_tokens(state.db, state.tokens) == 1
        refused = api.get("/me", tablet)
        assert refused.status_code == 401, refused.text
        assert api.get("/me", phone).status_code == 200
        assert api.post("/payments", tablet, json={"payee": "x", "amount": 1}).status_code == 401


def test_a_device_revoked_through_this_process_is_refused_at_once(database_url: str) -> None:
    """DELETE /devices/{id} and DELETE /sessions/current drop the cached token in the same
    request: the very next request with it is 401."""
    with _app(database_url) as client:
        api = Api(client, ADMIN_TOKEN)
        phone = api.user()
        tablet = api.log_in(phone.handle, "tablet")
        assert api.get("/me", tablet).status_code == 200
        assert api.delete(f"/devices/{tablet.device_id}", phone).status_code == 204
        assert api.get("/me", tablet).status_code == 401
        assert api.get("/me", phone).status_code == 200
        assert api.delete("/sessions/current", phone).status_code == 204
        assert api.get("/me", phone).status_code == 401


def test_the_relay_reads_each_accounts_last_seq_and_finds_revoked_or_unknown_devices(
    database_url: str,
) -> None:
    """The relay's tick: the outbox position of every account it is asked about, across
    more ids than one statement takes, and which devices are revoked or do not exist."""
    with _app(database_url) as client:
        api = Api(client, ADMIN_TOKEN)
        state: AppState = client.app.state.paycode  # type: ignore[attr-defined]
        payer = api.user(funds=5_000)
        payee = api.user()
        tablet = api.log_in(payee.handle, "tablet")
        paid = api.post("/payments", payer, json={"payee": payee.handle, "amount": 1_250})
        assert paid.status_code == 201, paid.text
        assert api.delete(f"/devices/{tablet.device_id}", payee).status_code == 204
        unknown = [f"nobody-{i}" for i in range(IN_CHUNK + 5)]
        last_seqs, gone = read_marks(
            state.db,
            [payer.account_id, payee.account_id, *unknown],
            [payer.device_id, payee.device_id, tablet.device_id, *unknown],
        )
        with state.db.raw_read() as tx:
            expected = dict(
                tx.all(
                    "SELECT id, last_seq FROM account WHERE id IN (?, ?)",
                    (payer.account_id, payee.account_id),
                )
            )
        assert expected[payer.account_id] >= 1 and expected[payee.account_id] >= 1
        assert last_seqs == expected
        assert gone == {tablet.device_id, *unknown}
