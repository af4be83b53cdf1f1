"""Spec §9: /openapi.json describes every route of the API, and nothing that is not there."""

from __future__ import annotations

from starlette.routing import Mount, Route, WebSocketRoute

from app.main import create_app
from app.openapi import document
from app.settings import Settings


def app_operations() -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="sqlite:///:memory:"), migrate_schema=False)
    found: set[tuple[str, str]] = set()
    for mount in app.routes:
        if not isinstance(mount, Mount) or mount.path != "/api/v1":
            continue
        for route in mount.routes:
            if isinstance(route, WebSocketRoute):
                continue
            assert isinstance(route, Route)
            for method in route.methods or ():
                if method != "HEAD":
                    found.add((route.path, method.lower()))
    return found


def documented_operations() -> set[tuple[str, str]]:
    paths = document()["paths"]
    return {(path, method) for path, operations in paths.items() for method in operations}


def normalise(operations: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Path parameter names are the server's business; compare the shapes."""
    import re

    return {(re.sub(r"\{[^}]+\}", "{}", path), method) for path, method in operations}


def test_every_served_route_is_documented() -> None:
    """A route added to the app without its OpenAPI entry fails here."""
    missing = normalise(app_operations()) - normalise(documented_operations())
    assert not missing, f"undocumented routes: {sorted(missing)}"


def test_every_schema_reference_resolves() -> None:
    """Each $ref points at a schema the document defines."""
    import json
    import re

    doc = document()
    text = json.dumps(doc)
    names = set(re.findall(r"#/components/schemas/(\w+)", text))
    assert names <= set(doc["components"]["schemas"])
