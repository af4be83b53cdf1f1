"""A thin client of the public HTTP API for tests: each helper asserts the happy status."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx

PASSWORD = "correct horse battery"
_counter = itertools.count(1)


@dataclass
class User:
    handle: str
    token: str
    account_id: str
    device_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    def __init__(self, client: Any, admin_token: str) -> None:
        self.client = client
        self.admin_token = admin_token

    def request(
        self, method: str, path: str, user: User | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if user is not None:
            headers.update(user.headers)
        return self.client.request(method, f"/api/v1{path}", headers=headers, **kwargs)

    def get(self, path: str, user: User | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, user, **kwargs)

    def post(self, path: str, user: User | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, user, **kwargs)

    def delete(self, path: str, user: User | None = None, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, user, **kwargs)

    def sign_up(self, handle: str | None = None, display_name: str | None = None) -> str:
        handle = handle or f"user{next(_counter)}"
        response = self.post(
            "/accounts",
            json={
                "handle": handle,
                "display_name": display_name or handle.title(),
                "password": PASSWORD,
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["handle"])

    def log_in(self, handle: str, device_name: str = "phone") -> User:
        response = self.post(
            "/sessions", json={"handle": handle, "password": PASSWORD, "device_name": device_name}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return User(handle, body["token"], body["account"]["id"], body["device"]["id"])

    def user(self, handle: str | None = None, funds: int = 0) -> User:
        user = self.log_in(self.sign_up(handle))
        if funds:
            self.deposit(user.handle, funds)
        return user

    def deposit(self, handle: str, amount: int) -> dict[str, Any]:
        response = self.post(
            "/admin/deposits",
            json={"handle": handle, "amount": amount},
            headers={"Authorization": f"Bearer {self.admin_token}"},
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    def agency(self, payee: User, agent: User, **extra: Any) -> dict[str, Any]:
        response = self.post("/agencies", payee, json={"agent": agent.handle, **extra})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def code(
        self, user: User, agency_id: str, kind: str = "dynamic", **body: Any
    ) -> dict[str, Any]:
        """Issue a collection code as user; a dynamic code without amount or items gets 1250."""
        if kind == "dynamic" and "amount" not in body and "items" not in body:
            body["amount"] = 1250
        response = self.post("/codes", user, json={"agency_id": agency_id, "kind": kind, **body})
        assert response.status_code == 201, response.text
        return dict(response.json())
