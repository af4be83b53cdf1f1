"""payment function: a whole payment in one round trip on PostgreSQL

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:00:00

The application reads what does not change (the code's parties and amount, the handles),
signs the receipt and builds the views; then this function does, inside the server, what
needs the locks: the stored response of the Idempotency-Key, the account rows locked in
ascending id order and the code's row, the checks of everything that can change (the code's
status and expiry, its agency's status, the payer's balance), the payment, its two ledger
legs, the balances, the code's status, the outbox events with each account's next seq, and the
Idempotency-Key record. The locks live for the microseconds the function runs, not for round
trips to the application. A refusal writes nothing and names its error code; the application
raises the matching error. SQLite keeps the application's own transaction (it has no network
between the two).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAY = r"""
CREATE FUNCTION paycode_pay(
    p_payment_id text,
    p_payer text,
    p_payee text,
    p_agent text,
    p_agency text,
    p_code text,
    p_code_kind text,
    p_code_label text,
    p_items json,
    p_memo text,
    p_receipt json,
    p_amount bigint,
    p_now timestamptz,
    p_legs text[],
    p_view json,
    p_code_view json,
    p_key text,
    p_scope text,
    p_hash text,
    p_stale_before timestamptz,
    OUT outcome text,
    OUT stored_status integer,
    OUT stored_response json,
    OUT stored_hash text,
    OUT seqs integer[],
    OUT event_accounts text[]
) LANGUAGE plpgsql AS $fn$
DECLARE
    found_record record;
    ids text[];
    lasts integer[] := '{}';
    deltas bigint[] := '{}';
    row_ record;
    at integer;
    code_row record;
    agency_status text;
    status_now text;
    event_types text[] := '{}';
    event_data json[] := '{}';
    event_seqs integer[] := '{}';
    account_id_ text;
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT request_hash, status_code, response, created_at INTO found_record
        FROM idempotency_record
        WHERE account_id = p_payer AND scope = p_scope AND "key" = p_key;
        IF FOUND THEN
            IF found_record.created_at >= p_stale_before THEN
                outcome := 'stored';
                stored_status := found_record.status_code;
                stored_response := found_record.response;
                stored_hash := found_record.request_hash;
                RETURN;
            END IF;
            DELETE FROM idempotency_record
            WHERE account_id = p_payer AND scope = p_scope AND "key" = p_key;
        END IF;
    END IF;

    -- Ascending id order, as every other money movement locks them: no deadlock.
    event_accounts := '{}';
    ids := ARRAY(
        SELECT DISTINCT x FROM unnest(ARRAY[p_payer, p_payee, p_agent]) AS x
        WHERE x IS NOT NULL ORDER BY x
    );
    FOR row_ IN
        SELECT id, kind, balance, last_seq FROM account
        WHERE id = ANY(ids) ORDER BY id FOR NO KEY UPDATE
    LOOP
        lasts := lasts || row_.last_seq;
        deltas := deltas || 0::bigint;
        IF row_.id = p_payer AND row_.kind <> 'funding' THEN
            -- Checked after the code below; kept here while the row is at hand.
            IF row_.balance - p_amount < 0 THEN
                outcome := 'insufficient_funds';
            END IF;
        END IF;
    END LOOP;
    IF cardinality(lasts) <> cardinality(ids) THEN
        RAISE EXCEPTION 'paycode_pay: an account of the payment does not exist';
    END IF;

    IF p_code IS NOT NULL THEN
        SELECT status, expires_at, agency_id INTO code_row
        FROM code WHERE id = p_code FOR NO KEY UPDATE;
        status_now := code_row.status;
        IF status_now = 'active' AND code_row.expires_at IS NOT NULL
                AND code_row.expires_at <= p_now THEN
            status_now := 'expired';
        END IF;
        IF status_now <> 'active' THEN
            outcome := CASE status_now
                WHEN 'paid' THEN 'code_already_paid'
                WHEN 'expired' THEN 'code_expired'
                WHEN 'cancelled' THEN 'code_cancelled'
                WHEN 'revoked' THEN 'agency_revoked'
                ELSE 'code_not_active' END;
            RETURN;
        END IF;
        SELECT status INTO agency_status FROM agency WHERE id = code_row.agency_id;
        IF agency_status IS DISTINCT FROM 'active' THEN
            outcome := CASE agency_status
                WHEN 'revoked' THEN 'agency_revoked'
                WHEN 'pending' THEN 'agency_pending'
                ELSE 'agency_not_active' END;
            RETURN;
        END IF;
    END IF;
    IF outcome IS NOT NULL THEN
        RETURN;
    END IF;

    INSERT INTO payment (
        id, status, amount, refunded_amount, payer_id, payee_id, agent_id, agency_id,
        code_id, code_kind, code_label, items, memo, receipt, created_at
    ) VALUES (
        p_payment_id, 'succeeded', p_amount, 0, p_payer, p_payee, p_agent, p_agency,
        p_code, p_code_kind, p_code_label, p_items, p_memo, p_receipt, p_now
    );
    INSERT INTO ledger_entry (id, txn_id, kind, account_id, amount, created_at) VALUES
        (p_legs[1], p_payment_id, 'payment', p_payer, -p_amount, p_now),
        (p_legs[2], p_payment_id, 'payment', p_payee, p_amount, p_now);
    deltas[array_position(ids, p_payer)] := -p_amount;
    deltas[array_position(ids, p_payee)] := p_amount;

    -- The events in the order the application publishes them: payment.succeeded to every
    -- party, then code.paid to the code's agent and payee when a dynamic code is used up.
    FOREACH account_id_ IN ARRAY ids LOOP
        at := array_position(ids, account_id_);
        lasts[at] := lasts[at] + 1;
        event_accounts := event_accounts || account_id_;
        event_types := event_types || 'payment.succeeded'::text;
        event_data := event_data || p_view;
        event_seqs := event_seqs || lasts[at];
    END LOOP;
    IF p_code_kind = 'dynamic' THEN
        UPDATE code SET status = 'paid', paid_payment_id = p_payment_id WHERE id = p_code;
        FOREACH account_id_ IN ARRAY ARRAY(
            SELECT DISTINCT x FROM unnest(ARRAY[p_agent, p_payee]) AS x ORDER BY x
        ) LOOP
            at := array_position(ids, account_id_);
            lasts[at] := lasts[at] + 1;
            event_accounts := event_accounts || account_id_;
            event_types := event_types || 'code.paid'::text;
            event_data := event_data || p_code_view;
            event_seqs := event_seqs || lasts[at];
        END LOOP;
    END IF;

    UPDATE account SET balance = account.balance + d.delta, last_seq = d.last_seq
    FROM unnest(ids, deltas, lasts) AS d(id, delta, last_seq)
    WHERE account.id = d.id;
    INSERT INTO event (account_id, seq, type, data, created_at)
    SELECT a, s, t, d, p_now
    FROM unnest(event_accounts, event_seqs, event_types, event_data) AS e(a, s, t, d);

    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_record
            (account_id, scope, "key", request_hash, status_code, response, created_at)
        VALUES (p_payer, p_scope, p_key, p_hash, 201, p_view, p_now);
    END IF;
    outcome := 'ok';
    seqs := event_seqs;
END
$fn$
"""

SIGNATURE = (
    "paycode_pay(text, text, text, text, text, text, text, text, json, text, json, bigint,"
    " timestamptz, text[], json, json, text, text, text, timestamptz)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PAY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {SIGNATURE}")
