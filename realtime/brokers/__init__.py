"""Brokers carry events between server instances; the URL scheme picks the backend."""

from __future__ import annotations

import importlib

from realtime.brokers.base import Broker, BrokerSink

# Backends are imported only when their scheme is used, so memory:// needs no Redis client.
BACKENDS = {
    "memory": "realtime.brokers.memory:MemoryBroker",
    "redis": "realtime.brokers.redis:RedisBroker",
    "rediss": "realtime.brokers.redis:RedisBroker",
}


def make_broker(url: str, sink: BrokerSink) -> Broker:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target = BACKENDS.get(scheme)
    if target is None:
        raise ValueError(f"unsupported broker URL scheme {scheme!r}: use memory:// or redis://")
    module_name, class_name = target.split(":")
    backend: type[Broker] = getattr(importlib.import_module(module_name), class_name)
    return backend(url, sink)


__all__ = ["BACKENDS", "Broker", "BrokerSink", "make_broker"]
