"""Spec §11's address rules: which URLs and resolved addresses may receive webhooks, checked
when an endpoint is saved and again when each attempt connects (to the address checked)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from hypothesis import given

from app.settings import from_env
from app.webhooks.addresses import (
    RefusedAddress,
    check_url,
    checked_addresses,
    is_public,
    parse_url,
)
from app.webhooks.sender import Sender
from models.webhooks import OK, REFUSED_ADDRESS
from tests.strategies import any_text
from tests.webhook_receiver import Receiver

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "::1",
    "10.0.0.5",
    "172.16.3.4",
    "192.168.1.1",
    "169.254.169.254",  # the cloud metadata service
    "fe80::1",
    "fc00::1",
    "0.0.0.0",
    "::",
    "224.0.0.1",
    "ff02::1",
    "100.64.0.1",
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "240.0.0.1",
    "255.255.255.255",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "1.1.1.1"]


def resolver_of(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, _port: int) -> list[str]:
        if host not in table:
            raise OSError("Name or service not known")
        return table[host]

    return resolve


@pytest.mark.parametrize("address", REFUSED)
def test_loopback_private_link_local_multicast_and_unspecified_are_not_public(
    address: str,
) -> None:
    """Every non-public range, IPv4 hidden in IPv6 included, is refused."""
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_global_unicast_is_public(address: str) -> None:
    """Ordinary internet addresses pass."""
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", REFUSED)
def test_a_url_naming_a_refused_address_is_refused_at_save(address: str) -> None:
    """https://<literal>/ with a non-public address is refused without asking DNS."""
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(RefusedAddress):
        asyncio.run(
            check_url(f"https://{host}/hook", allow_private=False, resolver=resolver_of({}))
        )


@pytest.mark.parametrize(
    ("name", "addresses"),
    [
        ("localhost", ["127.0.0.1"]),
        ("intranet.example.com", ["10.0.0.7"]),
        ("metadata.example.com", ["169.254.169.254"]),
        ("mixed.example.com", ["93.184.216.34", "192.168.0.10"]),
    ],
)
def test_a_public_looking_name_resolving_to_a_private_address_is_refused(
    name: str, addresses: list[str]
) -> None:
    """What counts is where the name resolves: a name with any non-public address is refused."""
    with pytest.raises(RefusedAddress):
        asyncio.run(
            check_url(
                f"https://{name}/hook",
                allow_private=False,
                resolver=resolver_of({name: addresses}),
            )
        )


def test_a_name_that_does_not_resolve_is_refused() -> None:
    """No address, no endpoint: 'does not resolve' is the reason given."""
    with pytest.raises(RefusedAddress, match="does not resolve"):
        asyncio.run(
            check_url("https://nowhere.invalid/", allow_private=False, resolver=resolver_of({}))
        )


def test_a_public_name_is_accepted_and_its_addresses_returned() -> None:
    """The addresses checked are the ones returned, for the connection to use."""
    resolve = resolver_of({"hooks.example.com": ["93.184.216.34"]})
    assert asyncio.run(
        checked_addresses("hooks.example.com", 443, allow_private=False, resolver=resolve)
    ) == ["93.184.216.34"]


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "https://",
        "https://user:pw@hooks.example.com/",
        "https://hooks.example.com:0/",
        "https://hooks.example.com:99999/",
        "https://exämple.com/",
        "https://hooks.example.com/a b",
        "https://" + "a" * 2050 + ".com/",
        "",
        None,
        12,
    ],
)
def test_malformed_or_plain_http_urls_are_refused(url: object) -> None:
    """Only https:// URLs of at most 2,048 ASCII characters naming a host, without
    credentials."""
    with pytest.raises(RefusedAddress):
        parse_url(url, allow_private=False)


def test_allow_private_admits_http_and_loopback() -> None:
    """PAYCODE_WEBHOOK_ALLOW_PRIVATE=1 (development, tests) lets http:// and 127.0.0.1 in."""
    assert from_env({"PAYCODE_WEBHOOK_ALLOW_PRIVATE": "1"}).webhook_allow_private
    assert not from_env({}).webhook_allow_private
    url = "http://127.0.0.1:9/hook"
    assert asyncio.run(check_url(url, allow_private=True, resolver=resolver_of({}))) == url


@given(any_text(max_size=300))
def test_any_text_is_accepted_or_refused_with_a_reason(url: str) -> None:
    """Whatever the text, the check answers with the URL or RefusedAddress, nothing else."""
    try:
        result = asyncio.run(check_url(url, allow_private=False, resolver=resolver_of({})))
    except RefusedAddress as exc:
        assert str(exc)
    else:
        assert result == url


def test_the_connection_is_refused_when_the_name_now_resolves_to_a_private_address() -> None:
    """DNS rebinding: a name that passed at save time and now resolves to 127.0.0.1 is
    refused when the attempt connects; nothing is sent."""
    table = {"hooks.example.com": ["127.0.0.1"]}

    async def attempt() -> str:
        sender = Sender(allow_private=False, resolver=resolver_of(table), max_connections=2)
        try:
            outcome = await sender.post("https://hooks.example.com/x", {}, b"{}")
        finally:
            await sender.close()
        return outcome.outcome

    assert asyncio.run(attempt()) == REFUSED_ADDRESS


def test_the_connection_goes_to_the_checked_address_not_a_second_lookup() -> None:
    """The name is resolved once per connection and the socket opened to what was checked:
    the receiver listens on 127.0.0.1 only, the resolver answers 127.0.0.1 first and
    127.0.0.2 after, and the attempt reaches the receiver with the name as its Host."""
    receiver = Receiver().start()
    calls: list[str] = []

    async def flipping(host: str, _port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    async def attempt() -> str:
        sender = Sender(allow_private=True, resolver=flipping, max_connections=2, timeout=5.0)
        try:
            outcome = await sender.post(
                f"http://rebind.example.com:{receiver.port}/pinned", {}, b"{}"
            )
        finally:
            await sender.close()
        return outcome.outcome

    try:
        assert asyncio.run(attempt()) == OK
        [call] = receiver.of("pinned")
        assert call.headers["host"] == f"rebind.example.com:{receiver.port}"
        assert calls == ["rebind.example.com"]
    finally:
        receiver.stop()
