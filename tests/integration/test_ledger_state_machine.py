"""Random sequences of deposits, agencies, codes, payments and refunds through the public
API, checked step by step against a small model of the rules, and at the end against the
books: `paycode verify` passes and every balance is what the API's own lists imply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from app.cli import main as cli
from tests.api import Api, User

USERS = 4
amounts = st.integers(min_value=1, max_value=3000)
who = st.integers(min_value=0, max_value=USERS - 1)


@dataclass
class AgencyModel:
    id: str
    payee: int
    agent: int
    can_refund: bool
    active: bool = True


@dataclass
class CodeModel:
    body: dict[str, Any]
    agency: AgencyModel
    paid: bool = False


@dataclass
class PaymentModel:
    id: str
    payer: int
    payee: int
    amount: int
    agent: int | None = None
    agency: AgencyModel | None = None
    refunded: int = 0


@dataclass
class Model:
    users: list[User]
    balances: list[int]
    deposits: list[int] = field(default_factory=list)
    agencies: list[AgencyModel] = field(default_factory=list)
    codes: list[CodeModel] = field(default_factory=list)
    payments: list[PaymentModel] = field(default_factory=list)


def expect(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json() if response.content else {}
    if code is not None:
        assert body["error"]["code"] == code, response.text
    return body


def pages(api: Api, path: str, user: User) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = ""
    while True:
        body = api.get(f"{path}{cursor}", user).json()
        rows += body["data"]
        if body["next_cursor"] is None:
            return rows
        cursor = f"&cursor={body['next_cursor']}"


def machine(api: Api, database_url: str) -> type[RuleBasedStateMachine]:
    class Books(RuleBasedStateMachine):
        m: Model

        @initialize(funds=st.lists(amounts, min_size=USERS, max_size=USERS))
        def accounts(self, funds: list[int]) -> None:
            # Funded from the start, so that even short runs move money.
            users = [api.user(funds=amount) for amount in funds]
            self.m = Model(users=users, balances=list(funds), deposits=list(funds))

        @rule(user=who, amount=amounts)
        def deposit(self, user: int, amount: int) -> None:
            api.deposit(self.m.users[user].handle, amount)
            self.m.balances[user] += amount
            self.m.deposits[user] += amount

        @rule(payee=who, agent=who, can_refund=st.booleans())
        def open_agency(self, payee: int, agent: int, can_refund: bool) -> None:
            body = {"agent": self.m.users[agent].handle, "can_refund": can_refund}
            response = api.post("/agencies", self.m.users[payee], json=body)
            if any(a.active and (a.payee, a.agent) == (payee, agent) for a in self.m.agencies):
                expect(response, 409, "agency_exists")
                return
            made = expect(response, 201)
            self.m.agencies.append(AgencyModel(made["id"], payee, agent, can_refund))

        @precondition(lambda self: self.m.agencies)
        @rule(data=st.data())
        def revoke_agency(self, data: st.DataObject) -> None:
            agency = data.draw(st.sampled_from(self.m.agencies))
            response = api.post(f"/agencies/{agency.id}/revoke", self.m.users[agency.payee])
            if not agency.active:
                expect(response, 409, "agency_revoked")
                return
            expect(response, 200)
            agency.active = False

        @precondition(lambda self: self.m.agencies)
        @rule(data=st.data(), kind=st.sampled_from(["static", "dynamic"]), fixed=st.booleans())
        def issue_code(self, data: st.DataObject, kind: str, fixed: bool) -> None:
            agency = data.draw(st.sampled_from(self.m.agencies))
            body: dict[str, Any] = {"agency_id": agency.id, "kind": kind}
            if kind == "dynamic" or fixed:
                body["amount"] = data.draw(amounts)
            response = api.post("/codes", self.m.users[agency.agent], json=body)
            if not agency.active:
                expect(response, 409, "agency_revoked")
                return
            self.m.codes.append(CodeModel(expect(response, 201), agency))

        def _settle(
            self, response: Any, payer: int, payee: int, amount: int, code: CodeModel | None
        ) -> None:
            if payer == payee:
                expect(response, 422, "self_payment")
            elif self.m.balances[payer] < amount:
                expect(response, 409, "insufficient_funds")
            else:
                body = expect(response, 201)
                assert body["amount"] == amount
                self.m.balances[payer] -= amount
                self.m.balances[payee] += amount
                agency = code.agency if code else None
                self.m.payments.append(
                    PaymentModel(
                        body["id"], payer, payee, amount, agency.agent if agency else None, agency
                    )
                )
                if code is not None and code.body["kind"] == "dynamic":
                    code.paid = True

        @precondition(lambda self: self.m.codes)
        @rule(data=st.data(), payer=who, typed=st.one_of(st.none(), amounts))
        def pay_by_code(self, data: st.DataObject, payer: int, typed: int | None) -> None:
            code = data.draw(st.sampled_from(self.m.codes))
            body: dict[str, Any] = {
                "code": code.body[data.draw(st.sampled_from(["token", "short_code"]))]
            }
            if typed is not None:
                body["amount"] = typed
            response = api.post("/payments", self.m.users[payer], json=body)
            fixed = code.body["amount"]
            if code.paid:
                expect(response, 409, "code_already_paid")
            elif not code.agency.active:
                expect(response, 409, "agency_revoked")
            elif fixed is not None and typed is not None and typed != fixed:
                expect(response, 422, "amount_mismatch")
            elif fixed is None and typed is None:
                expect(response, 422, "amount_required")
            else:
                amount = fixed if fixed is not None else typed
                assert amount is not None
                self._settle(response, payer, code.agency.payee, amount, code)

        @rule(payer=who, payee=who, amount=amounts)
        def pay_directly(self, payer: int, payee: int, amount: int) -> None:
            body = {"payee": self.m.users[payee].handle, "amount": amount}
            response = api.post("/payments", self.m.users[payer], json=body)
            self._settle(response, payer, payee, amount, None)

        @precondition(lambda self: self.m.payments)
        @rule(data=st.data(), actor=who, amount=st.one_of(st.none(), amounts))
        def refund(self, data: st.DataObject, actor: int, amount: int | None) -> None:
            payment = data.draw(st.sampled_from(self.m.payments))
            body = {} if amount is None else {"amount": amount}
            response = api.post(f"/payments/{payment.id}/refunds", self.m.users[actor], json=body)
            remaining = payment.amount - payment.refunded
            wanted = remaining if amount is None else amount
            allowed = actor == payment.payee or (
                actor == payment.agent
                and payment.agency is not None
                and payment.agency.active
                and payment.agency.can_refund
            )
            if actor not in (payment.payer, payment.payee, payment.agent):
                expect(response, 404, "not_found")
            elif not allowed:
                expect(response, 403, "forbidden")
            elif wanted > remaining or wanted == 0:
                expect(response, 409, "refund_exceeds_payment")
            elif self.m.balances[payment.payee] < wanted:
                expect(response, 409, "insufficient_funds")
            else:
                assert expect(response, 201)["amount"] == wanted
                payment.refunded += wanted
                self.m.balances[payment.payee] -= wanted
                self.m.balances[payment.payer] += wanted

        def teardown(self) -> None:
            if not hasattr(self, "m"):
                return
            for index, user in enumerate(self.m.users):
                shown = api.get("/me", user).json()["balance"]
                assert shown == self.m.balances[index]
                # What the API's own lists say this account must hold.
                deposits = sum(
                    e["data"]["amount"]
                    for e in pages(api, "/events?limit=200", user)
                    if e["type"] == "deposit.succeeded"
                )
                net = {
                    p["id"]: p["amount"] - p["refunded_amount"]
                    for p in pages(api, "/payments?limit=200", user)
                }
                received = pages(api, "/payments?role=payee&limit=200", user)
                sent = pages(api, "/payments?role=payer&limit=200", user)
                implied = (
                    deposits + sum(net[p["id"]] for p in received) - sum(net[p["id"]] for p in sent)
                )
                assert deposits == self.m.deposits[index]
                assert shown == implied, (user.handle, shown, implied)
            assert cli(["verify", "--database-url", database_url]) == 0

    return Books


def test_random_money_movements_keep_the_books(api: Api, database_url: str) -> None:
    """Whatever order deposits, agencies, codes, payments and refunds come in, each answer
    is the one the rules give, no money is made or lost, and `paycode verify` passes."""
    run_state_machine_as_test(
        machine(api, database_url),
        settings=settings(
            max_examples=20,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # Every step is real HTTP on a real database: shrinking a failure would take
            # minutes, and the failing sequence is printed step by step without it.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )
