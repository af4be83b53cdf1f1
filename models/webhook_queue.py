"""The delivery queue of spec §11: from the outbox to deliveries, leases, outcomes, retries.

Each pass of a process's worker is one write transaction of the queue's tables
(models/webhooks.py ``QUEUE_TABLES``). On SQLite those live in a database file of their own
(models/db.py), so the pass never takes the payments' write lock; a read before it builds
every row the pass will write (new events fanned out to their endpoints' deliveries, the
outcomes of ended attempts), so the write holds its own file's lock for its statements only,
and what the write must read of the endpoints and events it reads through ``main``, a
reader whose statements are each their own short snapshot: the write keeps no snapshot of
the database open for the database's checkpoints to wait for. The write keeps a fan-out
only for endpoints whose cursor is still where the read found it, so two passes never fan
out one event twice. On PostgreSQL the rows are built inside the transaction (``main`` is
that transaction), and with several processes the endpoints and deliveries a pass works on
are taken with ``FOR UPDATE SKIP LOCKED``, so two processes never fan out one endpoint or
claim one delivery at once. A first attempt is held by its pass's flight, whose lease runs
past the attempt's timeout; its outcome inserts the delivery's row, and a flight whose holder
died becomes pending deliveries when the lease runs out (``recover``). A retry holds its row
by a lease: the claim writes a ``lease_token`` and a ``lease_until``, only the holder of the
token records the outcome, and a retry whose holder died is due again when the lease runs
out.

Every delivery of every payment passes through here several times, so the statements are
hand-written SQL on the session's connection (models/sql.py), batched per pass; only the rare
switch-off of a failing endpoint goes through the ORM.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from models.accounts import lock_accounts
from models.clock import rfc3339
from models.events import Published, append
from models.ids import new_id
from models.sql import Tx
from models.webhooks import (
    FAILED,
    IN_FLIGHT,
    INTERRUPTED,
    PENDING,
    SUCCEEDED,
    WEBHOOK_DISABLED,
    WebhookEndpoint,
    attempt_entry,
    aware,
    endpoint_view,
)

# Spec §11: retried after about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h, ±20 %.
RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.2
DISABLE_AFTER = timedelta(days=3)
FAN_OUT_EVENTS = 2000
CLAIM_CANDIDATES = 200
STOPPED_BEFORE_ANSWER = "the sending process stopped before an answer"


def retry_delay(attempts: int, schedule: Sequence[float] = RETRY_SCHEDULE) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones, or None when the
    schedule is spent and the delivery has failed."""
    if attempts < 1 or attempts > len(schedule):
        return None
    base = schedule[attempts - 1]
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


# Where an endpoint's fan-out stands: its cursor, unless it was enabled again past it.
_WITH_CURSOR = "webhook_endpoint w LEFT JOIN webhook_cursor c ON c.webhook_id = w.id"
_CURSOR = "CASE WHEN c.seq > w.start_seq THEN c.seq ELSE w.start_seq END"
_BEHIND = (
    f"SELECT 1 FROM {_WITH_CURSOR} WHERE w.enabled AND EXISTS (SELECT 1 FROM event e"
    f" WHERE e.account_id = w.account_id AND e.seq > {_CURSOR}) LIMIT 1"
)
# Every endpoint's new events in one statement: a pass's cost must not grow with the number of
# endpoints that are behind.
_NEW_EVENTS = (
    "SELECT w.id, w.account_id, w.events, w.url, w.secret, w.previous_secret,"
    f" w.previous_secret_until, {_CURSOR}, e.seq, e.type, e.data, e.created_at"
    f" FROM {_WITH_CURSOR} JOIN event e ON e.account_id = w.account_id"
    f" AND e.seq > {_CURSOR} WHERE w.enabled ORDER BY w.id, e.seq LIMIT {{limit}}"
)
_INSERT_DELIVERY = (
    "INSERT INTO webhook_delivery (id, webhook_id, account_id, type, seq, status, attempts,"
    " next_attempt_at, created_at, attempt_log) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)"
)
_INSERT_FLIGHT = (
    "INSERT INTO webhook_flight (token, started_at, lease_until, deliveries) VALUES (?, ?, ?, ?)"
)
# A delivery's row written once, with its first attempt's outcome. DO NOTHING: a row already
# there was inserted by a process that took over the flight after its lease ran out.
_INSERT_OUTCOME = (
    "INSERT INTO webhook_delivery (id, webhook_id, account_id, type, seq, status, attempts,"
    " last_status_code, last_error, next_attempt_at, created_at, delivered_at, attempt_log)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_MOVE_CURSOR = (
    "INSERT INTO webhook_cursor (webhook_id, seq) VALUES (?, ?)"
    " ON CONFLICT (webhook_id) DO UPDATE SET seq = excluded.seq"
)


_ANY_ENABLED = "SELECT 1 FROM webhook_endpoint WHERE enabled LIMIT 1"


def any_enabled(tx: Tx) -> bool:
    """Whether any endpoint at all is enabled: with none, no delivery can be owed."""
    return tx.one(_ANY_ENABLED) is not None


def any_behind(tx: Tx) -> bool:
    """Whether any enabled endpoint has outbox events not yet turned into deliveries: a read,
    so that an idle pass never takes the queue file's write lock on SQLite."""
    return tx.one(_BEHIND) is not None


@dataclass(frozen=True, slots=True)
class Job:
    """One attempt: everything the sender needs, and what its delivery's row is made of. A
    first attempt belongs to a ``flight`` (its row does not exist yet); a retry holds its
    row's lease, ``lease_token``."""

    delivery_id: str
    webhook_id: str
    lease_token: str
    number: int
    started_at: datetime
    url: str
    secrets: list[str]
    account_id: str
    type: str
    seq: int | None
    body: bytes = field(repr=False)
    log: list[dict[str, Any]] = field(repr=False)
    flight: str | None = None


_DUE = (
    "SELECT d.id, d.webhook_id FROM webhook_delivery d"
    " WHERE d.status = 'pending' AND d.next_attempt_at <= ?"
    " AND (d.lease_until IS NULL OR d.lease_until <= ?){busy}"
    " ORDER BY d.next_attempt_at LIMIT {limit}"
)
_DISABLED = "SELECT id FROM webhook_endpoint WHERE NOT enabled"
_CLAIMED = (
    "SELECT d.id, d.webhook_id, d.account_id, d.type, d.seq, d.attempts, d.attempt_log,"
    " d.created_at FROM webhook_delivery d WHERE d.id IN ({marks})"
)
_ENDPOINTS = (
    "SELECT id, url, secret, previous_secret, previous_secret_until FROM webhook_endpoint"
    " WHERE id IN ({marks})"
)
_EVENTS = "SELECT account_id, seq, type, data, created_at FROM event WHERE {where}"
# Deliveries of an endpoint deleted meanwhile (its deletion removes its rows next, or the
# process that deleted it stopped before it could).
_FORGET = "DELETE FROM webhook_delivery WHERE id IN ({marks})"
_LEASE = (
    "UPDATE webhook_delivery SET attempts = ?, lease_token = ?, lease_until = ?,"
    " next_attempt_at = ?, attempt_log = ? WHERE id = ?"
)


def full_endpoints(room: dict[str, int]) -> set[str]:
    """The endpoints of ``room`` with no attempt slot left."""
    return {webhook_id for webhook_id, left in room.items() if left <= 0}


def _due(tx: Tx, now: datetime, skip: set[str], limit: int, lock: bool) -> list[tuple[str, str]]:
    """Due deliveries, oldest first, but those of the endpoints in ``skip``."""
    busy = sorted(skip)
    statement = _DUE.format(
        busy=f" AND d.webhook_id NOT IN ({_marks(busy)})" if busy else "", limit=limit
    )
    if lock and not tx.is_sqlite:
        statement += " FOR UPDATE OF d SKIP LOCKED"
    moment = tx.moment(now)
    return [(r[0], r[1]) for r in tx.all(statement, (moment, moment, *busy))]


def _disabled(main: Tx) -> set[str]:
    """The endpoints switched off: their deliveries wait, pending, until they are on again.
    Read apart from the queue's own statements, which on SQLite cannot see the endpoints."""
    return {row[0] for row in main.all(_DISABLED)}


def any_due(tx: Tx, now: datetime, full: set[str], main: Tx | None = None) -> bool:
    return bool(_due(tx, now, full | _disabled(main or tx), 1, lock=False))


def claim(
    tx: Tx,
    now: datetime,
    *,
    slots: int,
    room: dict[str, int],
    per_endpoint: int,
    lease: timedelta,
    main: Tx | None = None,
) -> list[Job]:
    """Lease up to ``slots`` due deliveries, at most ``room.get(id, per_endpoint)`` of each
    endpoint, oldest due first; endpoints with no room left are not even read. ``main``
    reads the endpoints and events (on SQLite the queue's transaction cannot see them);
    a delivery whose endpoint is gone is deleted."""
    main = main or tx
    skip = full_endpoints(room) | _disabled(main)
    left = dict(room)
    taken: list[str] = []
    for delivery_id, webhook_id in _due(tx, now, skip, CLAIM_CANDIDATES, lock=True):
        if len(taken) >= slots:
            break
        if left.setdefault(webhook_id, per_endpoint) <= 0:
            continue
        left[webhook_id] -= 1
        taken.append(delivery_id)
    if not taken:
        return []
    rows = tx.all(_CLAIMED.format(marks=_marks(taken)), taken)
    hooks = sorted({r[1] for r in rows})
    endpoints = {r[0]: r for r in main.all(_ENDPOINTS.format(marks=_marks(hooks)), hooks)}
    gone = [r[0] for r in rows if r[1] not in endpoints]
    if gone:
        tx.run(_FORGET.format(marks=_marks(gone)), gone)
        rows = [r for r in rows if r[1] in endpoints]
    bodies = _bodies(main, rows)
    until = now + lease
    jobs: list[Job] = []
    leases: list[tuple[Any, ...]] = []
    for delivery_id, webhook_id, account_id, type_, seq, attempts, log, _created in rows:
        endpoint = endpoints[webhook_id]
        entries = [dict(e) for e in tx.read_json(log)]
        for entry in entries:
            if entry["outcome"] == IN_FLIGHT:
                # Its process stopped before an answer; the lease ran out.
                entry["outcome"] = INTERRUPTED
                entry["error"] = STOPPED_BEFORE_ANSWER
        number = attempts + 1
        entries.append(attempt_entry(number, IN_FLIGHT, now))
        token = secrets.token_hex(16)
        leases.append(
            (number, token, tx.moment(until), tx.moment(until), tx.json(entries), delivery_id)
        )
        jobs.append(
            Job(
                delivery_id=delivery_id,
                webhook_id=webhook_id,
                lease_token=token,
                number=number,
                started_at=now,
                url=endpoint[1],
                secrets=_secrets(tx, endpoint, now),
                account_id=account_id,
                type=type_,
                seq=seq,
                body=bodies[delivery_id],
                log=entries,
            )
        )
    tx.run_many(_LEASE, leases)
    return jobs


@dataclass(slots=True)
class FanOut:
    """New outbox events turned into deliveries, read outside the write lock: written by
    ``apply_fan_out`` for each endpoint whose cursor has not moved since (``cursors``: the
    cursor read and the one to write). Those sent at once (``jobs``) go into one flight."""

    token: str
    started_at: Any
    lease_until: Any
    cursors: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Read in the write's own transaction with the endpoints locked: nothing to check again.
    locked: bool = False
    pending: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    jobs: dict[str, list[Job]] = field(default_factory=dict)


def plan_fan_out(
    tx: Tx,
    now: datetime,
    *,
    slots: int,
    room: dict[str, int],
    per_endpoint: int,
    lease: timedelta,
    lock: bool = False,
) -> FanOut:
    """Read every endpoint's new events and build their deliveries, up to ``slots`` of them
    sent at once in one flight (at most ``room.get(id, per_endpoint)`` per endpoint, taken
    from ``room``), the rest written pending for a claim. Every row and body is made
    here, so on SQLite it runs as a read before the write, which then holds the write lock
    for its statements only. ``lock`` (PostgreSQL, in the write's own transaction): the
    endpoints read are locked, those another pass holds skipped."""
    moment = tx.moment(now)
    # One flight, one token and one in-flight log entry for every delivery of the pass (the
    # log is copied before it changes).
    token = secrets.token_hex(16)
    plan = FanOut(token, moment, tx.moment(now + lease), locked=lock and not tx.is_sqlite)
    empty_log = tx.json([])
    entries = [attempt_entry(1, IN_FLIGHT, now)]
    wanted_by: dict[str, set[str]] = {}
    endpoint_secrets: dict[str, list[str]] = {}
    taken = 0
    statement = _NEW_EVENTS.format(limit=FAN_OUT_EVENTS)
    if plan.locked:
        # NO KEY: a delivery's insert checks its endpoint (FOR KEY SHARE) without waiting.
        statement += " FOR NO KEY UPDATE OF w SKIP LOCKED"
    for row in tx.all(statement):
        webhook_id, account_id, events, url, secret, previous, previous_until, cursor = row[:8]
        seq, type_, data, created_at = row[8:]
        read_at, _ = plan.cursors.get(webhook_id, (cursor, cursor))
        plan.cursors[webhook_id] = (read_at, seq)
        wanted = wanted_by.get(webhook_id)
        if wanted is None:
            wanted = wanted_by[webhook_id] = set(tx.read_json(events))
        if type_ not in wanted:
            continue
        delivery_id = new_id("msg")
        if taken < slots and room.setdefault(webhook_id, per_endpoint) > 0:
            room[webhook_id] -= 1
            taken += 1
            signing = endpoint_secrets.get(webhook_id)
            if signing is None:
                endpoint = (webhook_id, url, secret, previous, previous_until)
                signing = endpoint_secrets[webhook_id] = _secrets(tx, endpoint, now)
            plan.jobs.setdefault(webhook_id, []).append(
                Job(
                    delivery_id=delivery_id,
                    webhook_id=webhook_id,
                    lease_token=token,
                    number=1,
                    started_at=now,
                    url=url,
                    secrets=signing,
                    account_id=account_id,
                    type=type_,
                    seq=seq,
                    body=body_bytes(type_, tx.read_moment(created_at), seq, data),
                    log=entries,
                    flight=token,
                )
            )
        else:
            plan.pending.setdefault(webhook_id, []).append(
                (delivery_id, webhook_id, account_id, type_, seq, moment, moment, empty_log)
            )
    return plan


_STARTS = "SELECT id, start_seq FROM webhook_endpoint WHERE enabled AND id IN ({marks})"
_CURSORS = "SELECT webhook_id, seq FROM webhook_cursor WHERE webhook_id IN ({marks})"


def apply_fan_out(tx: Tx, plan: FanOut, main: Tx | None = None) -> tuple[int, list[Job]]:
    """Write a fan-out: how many deliveries it created, and the attempts of its flight. Read before
    this transaction, it is kept only for endpoints still enabled whose cursor has not moved
    since (another pass fanned them out), and not held by another pass right now
    (PostgreSQL); the others are read again by the next pass."""
    if not plan.cursors:
        return 0, []
    ids = sorted(plan.cursors)
    if plan.locked:
        kept = ids
    else:
        statement = _STARTS.format(marks=_marks(ids))
        if not tx.is_sqlite:
            statement += " ORDER BY id FOR NO KEY UPDATE SKIP LOCKED"
        starts = dict((main or tx).all(statement, ids))
        cursors = dict(tx.all(_CURSORS.format(marks=_marks(ids)), ids))
        # As _CURSOR reads it: the cursor, unless the endpoint was enabled again past it.
        now_at = {i: max(start, cursors.get(i, start)) for i, start in starts.items()}
        kept = [i for i in ids if now_at.get(i) == plan.cursors[i][0]]
    pending = [row for i in kept for row in plan.pending.get(i, ())]
    jobs = [job for i in kept for job in plan.jobs.get(i, ())]
    tx.run_many(_INSERT_DELIVERY, pending)
    if jobs:
        flying = tx.json([_identity(job) for job in jobs])
        tx.run(_INSERT_FLIGHT, (plan.token, plan.started_at, plan.lease_until, flying))
    tx.run_many(_MOVE_CURSOR, [(i, plan.cursors[i][1]) for i in kept])
    return len(pending) + len(jobs), jobs


def _secrets(tx: Tx, endpoint: tuple[Any, ...], now: datetime) -> list[str]:
    """The current secret, and during a rotation's overlap the previous one too."""
    _id, _url, secret, previous, until = endpoint
    moment = tx.read_moment(until)
    if previous and moment is not None and moment > now:
        return [secret, previous]
    return [secret]


def _bodies(tx: Tx, rows: list[tuple[Any, ...]]) -> dict[str, bytes]:
    """The body of each delivery (spec §11): the outbox event as in §8, or the test event."""
    keys = sorted({(r[2], r[4]) for r in rows if r[4] is not None})
    events: dict[tuple[str, int], tuple[Any, ...]] = {}
    if keys:
        where = " OR ".join("(account_id = ? AND seq = ?)" for _ in keys)
        params = [v for key in keys for v in key]
        for row in tx.all(_EVENTS.format(where=where), params):
            events[(row[0], row[1])] = row
    found: dict[str, bytes] = {}
    for delivery_id, _hook, account_id, type_, seq, _n, _log, created_at in rows:
        if seq is None:
            found[delivery_id] = body_bytes(type_, tx.read_moment(created_at), None, {})
        else:
            _a, _s, event_type, data, event_at = events[(account_id, seq)]
            found[delivery_id] = body_bytes(event_type, tx.read_moment(event_at), seq, data)
    return found


def body_bytes(type_: str, moment: datetime | None, seq: int | None, data: Any) -> bytes:
    """``{"type", "timestamp", "seq", "data"}`` as ASCII JSON. Data stored as JSON text (SQLite
    keeps what ``json.dumps`` wrote: ASCII) goes in as it is, not parsed and written again."""
    head = json.dumps(
        {"type": type_, "timestamp": rfc3339(moment), "seq": seq},
        separators=(",", ":"),
        ensure_ascii=True,
    )
    if isinstance(data, str) and data.isascii():
        encoded = data
    elif isinstance(data, (str, bytes)):
        encoded = json.dumps(json.loads(data), separators=(",", ":"), ensure_ascii=True)
    else:
        encoded = json.dumps(data, separators=(",", ":"), ensure_ascii=True)
    return (head[:-1] + ',"data":' + encoded + "}").encode("ascii")


@dataclass(frozen=True, slots=True)
class Result:
    succeeded: bool
    outcome: str
    status_code: int | None
    error: str | None


_SETTLE = (
    "UPDATE webhook_delivery SET status = ?, lease_token = NULL, lease_until = NULL,"
    " last_status_code = ?, last_error = ?, next_attempt_at = ?, delivered_at = ?,"
    " attempt_log = ? WHERE id = ? AND lease_token = ?"
)
_HELD = "SELECT id, lease_token FROM webhook_delivery WHERE id IN ({marks})"
_RECOVERED = (
    "UPDATE webhook_cursor SET failing_since = NULL"
    " WHERE webhook_id IN ({marks}) AND failing_since IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class Finished:
    """What recording a pass's outcomes did: each delivery's new status (None if its lease
    was lost or it was deleted meanwhile), and the endpoints whose attempt failed."""

    statuses: list[str | None]
    failing: list[str]


@dataclass(frozen=True, slots=True)
class Settlement:
    """The outcome of one attempt as the row it writes, made outside the write lock."""

    job: Job
    status: str
    row: tuple[Any, ...]


def prepare_outcomes(
    tx: Tx,
    done: list[tuple[Job, Result]],
    now: datetime,
    *,
    schedule: Sequence[float] = RETRY_SCHEDULE,
) -> list[Settlement]:
    """Each ended attempt's new status and row (its next attempt's time drawn here)."""
    settlements: list[Settlement] = []
    moment = tx.moment(now)
    finished_at = rfc3339(now)
    for job, result in done:
        log = [dict(e) for e in job.log]
        if log and log[-1]["number"] == job.number:
            # The in-flight entry already holds the attempt's number and start.
            log[-1].update(
                outcome=result.outcome,
                status_code=result.status_code,
                error=result.error,
                finished_at=finished_at,
            )
        if result.succeeded:
            status, next_at, delivered = SUCCEEDED, None, moment
        else:
            delay = retry_delay(job.number, schedule)
            status = FAILED if delay is None else PENDING
            next_at = None if delay is None else tx.moment(now + timedelta(seconds=delay))
            delivered = None
        if job.flight is None:
            row: tuple[Any, ...] = (
                status,
                result.status_code,
                result.error,
                next_at,
                delivered,
                tx.json(log),
                job.delivery_id,
                job.lease_token,
            )
        else:
            row = _outcome_row(
                tx,
                _identity(job),
                status,
                job.number,
                result.status_code,
                result.error,
                next_at,
                job.started_at,
                log,
                delivered,
            )
        settlements.append(Settlement(job, status, row))
    return settlements


def _outcome_row(
    tx: Tx,
    identity: tuple[Any, ...],
    status: str,
    attempts: int,
    status_code: int | None,
    error: str | None,
    next_at: Any,
    started_at: datetime,
    log: list[dict[str, Any]],
    delivered: Any = None,
) -> tuple[Any, ...]:
    """A delivery's row as ``_INSERT_OUTCOME`` writes it, after its first attempt: landed,
    or cut short (pending, its first attempt interrupted). Created when that attempt began."""
    return (
        *identity,
        status,
        attempts,
        status_code,
        error,
        next_at,
        tx.moment(started_at),
        delivered,
        tx.json(log),
    )


def _identity(job: Job) -> tuple[Any, ...]:
    return (job.delivery_id, job.webhook_id, job.account_id, job.type, job.seq)


_FLIGHTS_HELD = "SELECT token FROM webhook_flight WHERE token IN ({marks})"
_ENDPOINTS_LEFT = "SELECT id FROM webhook_endpoint WHERE id IN ({marks})"
_LAND = "DELETE FROM webhook_flight WHERE token IN ({marks})"


def _firsts_kept(tx: Tx, jobs: Sequence[Job], main: Tx) -> set[str]:
    """Of first attempts, those whose row may be written: their flight is still this
    process's (no other process took it over after its lease ran out), and their endpoint is
    still there (it may have been deleted meanwhile). On PostgreSQL the flights are locked,
    then the endpoints, in that order, as a recovery does."""
    if not jobs:
        return set()
    tokens = sorted({job.flight for job in jobs if job.flight is not None})
    statement = _FLIGHTS_HELD.format(marks=_marks(tokens))
    if not tx.is_sqlite:
        statement += " ORDER BY token FOR UPDATE"
    held = {row[0] for row in tx.all(statement, tokens)}
    hooks = _endpoints_left(main, {job.webhook_id for job in jobs if job.flight in held})
    return {job.delivery_id for job in jobs if job.flight in held and job.webhook_id in hooks}


def _endpoints_left(tx: Tx, webhook_ids: set[str]) -> set[str]:
    if not webhook_ids:
        return set()
    ids = sorted(webhook_ids)
    statement = _ENDPOINTS_LEFT.format(marks=_marks(ids))
    if not tx.is_sqlite:
        # An endpoint cannot go before the insert commits: its deletion, which removes its
        # queue rows after it (models/webhook_endpoints.py), waits and takes these too.
        statement += " ORDER BY id FOR KEY SHARE"
    return {row[0] for row in tx.all(statement, ids)}


def _land(tx: Tx, tokens: Sequence[str]) -> None:
    if tokens:
        tx.run(_LAND.format(marks=_marks(tokens)), list(tokens))


def settle(
    tx: Tx, settlements: list[Settlement], landed: Sequence[str] = (), main: Tx | None = None
) -> Finished:
    """Record prepared outcomes in a few statements whatever their number: a retry's outcome
    updates its row if its lease is still held (the rows read and locked on PostgreSQL, in id
    order), a first attempt's inserts its delivery's row if its flight is still held; then the
    flights every attempt of which has landed (``landed``) are deleted."""
    retries = sorted(s.job.delivery_id for s in settlements if s.job.flight is None)
    held: dict[str, str] = {}
    if retries:
        statement = _HELD.format(marks=_marks(retries))
        if not tx.is_sqlite:
            statement += " ORDER BY id FOR UPDATE"
        held = dict(tx.all(statement, retries))
    firsts = _firsts_kept(tx, [s.job for s in settlements if s.job.flight is not None], main or tx)
    statuses: list[str | None] = []
    recovered: set[str] = set()
    failing: list[str] = []
    updates: list[tuple[Any, ...]] = []
    inserts: list[tuple[Any, ...]] = []
    for settlement in settlements:
        job = settlement.job
        if job.flight is None and held.get(job.delivery_id) == job.lease_token:
            updates.append(settlement.row)
        elif job.flight is not None and job.delivery_id in firsts:
            inserts.append(settlement.row)
        else:
            statuses.append(None)
            continue
        if settlement.status == SUCCEEDED:
            recovered.add(job.webhook_id)
        else:
            failing.append(job.webhook_id)
        statuses.append(settlement.status)
    tx.run_many(_SETTLE, updates)
    tx.run_many(_INSERT_OUTCOME, inserts)
    _land(tx, landed)
    if recovered:
        ids = sorted(recovered)
        tx.run(_RECOVERED.format(marks=_marks(ids)), ids)
    return Finished(statuses, list(dict.fromkeys(failing)))


def finish(
    tx: Tx,
    done: list[tuple[Job, Result]],
    now: datetime,
    *,
    schedule: Sequence[float] = RETRY_SCHEDULE,
    main: Tx | None = None,
) -> Finished:
    """``prepare_outcomes`` and ``settle`` in one transaction."""
    return settle(tx, prepare_outcomes(tx, done, now, schedule=schedule), main=main)


_STRANDED = "SELECT token, started_at, deliveries FROM webhook_flight WHERE lease_until <= ?"


def any_stranded(tx: Tx, now: datetime) -> bool:
    """Whether a flight's lease ran out: its process stopped before its attempts landed."""
    return tx.one(_STRANDED + " LIMIT 1", (tx.moment(now),)) is not None


def recover(tx: Tx, now: datetime, main: Tx | None = None) -> int:
    """Flights whose lease ran out become pending deliveries, due now, each with its first
    attempt logged as interrupted and with the id that attempt was sent with; the attempts
    that had landed already have their rows. How many deliveries were recovered."""
    statement = _STRANDED
    if not tx.is_sqlite:
        statement += " ORDER BY token FOR UPDATE SKIP LOCKED"
    flights = tx.all(statement, (tx.moment(now),))
    if not flights:
        return 0
    # Each entry is a first attempt's _identity: (delivery id, webhook id, account, type, seq).
    entries = [(started, tuple(e)) for _t, started, d in flights for e in tx.read_json(d)]
    hooks = _endpoints_left(main or tx, {identity[1] for _started, identity in entries})
    due = tx.moment(now)
    rows = []
    for started, identity in entries:
        if identity[1] not in hooks:
            continue
        started_at = tx.read_moment(started)
        assert started_at is not None
        log = attempt_entry(1, INTERRUPTED, started_at, error=STOPPED_BEFORE_ANSWER)
        rows.append(_outcome_row(tx, identity, PENDING, 1, None, None, due, started_at, [log]))
    tx.run_many(_INSERT_OUTCOME, rows)
    _land(tx, [row[0] for row in flights])
    return len(rows)


_ENABLED_AT = "SELECT id, enabled, enabled_at FROM webhook_endpoint WHERE id IN ({marks})"
_FAILING = "SELECT webhook_id, failing_since FROM webhook_cursor WHERE webhook_id IN ({marks})"
_START_FAILING = (
    "INSERT INTO webhook_cursor (webhook_id, seq, failing_since) VALUES (?, 0, ?)"
    " ON CONFLICT (webhook_id) DO UPDATE SET failing_since = excluded.failing_since"
)


def note_failures(
    tx: Tx,
    webhook_ids: Sequence[str],
    now: datetime,
    disable_after: timedelta,
    main: Tx | None = None,
) -> dict[str, datetime]:
    """After failed attempts, in a queue write: an endpoint's failing clock starts at its
    first failure since it last succeeded or was enabled. The endpoints failing for
    ``disable_after`` and still enabled are returned, with when they began to fail, for
    ``disable``."""
    ids = sorted(set(webhook_ids))
    if not ids:
        return {}
    failing_since = dict(tx.all(_FAILING.format(marks=_marks(ids)), ids))
    starts: list[tuple[Any, ...]] = []
    overdue: dict[str, datetime] = {}
    for webhook_id, enabled, enabled_at in (main or tx).all(
        _ENABLED_AT.format(marks=_marks(ids)), ids
    ):
        since = tx.read_moment(failing_since.get(webhook_id))
        # Enabled again since it began to fail: that clock is void (read_moment is aware).
        if since is None or since < (tx.read_moment(enabled_at) or since):
            starts.append((webhook_id, tx.moment(now)))
        elif enabled and now - since >= disable_after:
            overdue[webhook_id] = since
    tx.run_many(_START_FAILING, starts)
    return overdue


def disable(session: Session, overdue: dict[str, datetime], now: datetime) -> list[Published]:
    """Switch off the endpoints that failed every attempt since ``overdue[id]``, each
    account told by a ``webhook.disabled`` event in its outbox; not one enabled again (by
    its owner) since it began to fail."""
    published: list[Published] = []
    for webhook_id, since in sorted(overdue.items()):
        query = select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_id)
        if session.get_bind().dialect.name != "sqlite":
            query = query.with_for_update()
        endpoint = session.exec(query.execution_options(populate_existing=True)).first()
        if endpoint is None or not endpoint.enabled or aware(endpoint.enabled_at) > since:
            continue
        endpoint.enabled = False
        endpoint.updated_at = now
        session.add(endpoint)
        account = lock_accounts(session, {endpoint.account_id})[endpoint.account_id]
        data = {
            **endpoint_view(endpoint),
            "reason": "every delivery attempt failed",
            "failing_since": rfc3339(since),
        }
        published.append(append(session, account, WEBHOOK_DISABLED, data))
    return published


_RELEASE = (
    "UPDATE webhook_delivery SET lease_token = NULL, lease_until = NULL, next_attempt_at = ?,"
    " attempt_log = ? WHERE id = ? AND lease_token = ?"
)


def release(
    tx: Tx,
    jobs: list[Job],
    now: datetime,
    flights: Sequence[str] = (),
    main: Tx | None = None,
) -> None:
    """Give back the attempts this process abandons (it is stopping), so another process
    takes them at once instead of after their lease: a retry's lease is released, a first
    attempt's delivery written pending; then this process's ``flights`` are deleted."""
    kept = _firsts_kept(tx, [job for job in jobs if job.flight is not None], main or tx)
    releases = []
    inserts = []
    due = tx.moment(now)
    for job in jobs:
        log = [dict(e) for e in job.log]
        if log and log[-1]["outcome"] == IN_FLIGHT:
            log[-1]["outcome"] = INTERRUPTED
            log[-1]["error"] = "the sending process stopped"
            log[-1]["finished_at"] = rfc3339(now)
        if job.flight is None:
            releases.append((due, tx.json(log), job.delivery_id, job.lease_token))
        elif job.delivery_id in kept:
            inserts.append(
                _outcome_row(
                    tx, _identity(job), PENDING, job.number, None, None, due, job.started_at, log
                )
            )
    tx.run_many(_RELEASE, releases)
    tx.run_many(_INSERT_OUTCOME, inserts)
    _land(tx, sorted(flights))


_OLDEST = (
    "SELECT MIN(d.created_at) FROM webhook_delivery d"
    " JOIN webhook_endpoint w ON w.id = d.webhook_id"
    " WHERE d.status = 'pending' AND w.enabled"
)
_OLDEST_FLIGHT = "SELECT MIN(started_at) FROM webhook_flight"


def oldest_pending(tx: Tx) -> datetime | None:
    """When the oldest delivery still owed to an enabled endpoint was created, a first
    attempt still in flight included."""
    found = [tx.one(statement) for statement in (_OLDEST, _OLDEST_FLIGHT)]
    moments = [tx.read_moment(row[0]) for row in found if row is not None and row[0] is not None]
    return min((m for m in moments if m is not None), default=None)
