"""The OpenAPI document is a contract: docs/openapi.json is what the server serves. When
this fails after an intended change of the API, regenerate the file and review the diff:

    .venv/bin/python -m costor.server.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
from pathlib import Path

from costor.server.openapi import openapi_document

CHECKED_IN = Path(__file__).parents[2] / "docs" / "openapi.json"


def test_the_checked_in_document_is_the_served_one() -> None:
    assert json.loads(CHECKED_IN.read_text()) == openapi_document(), (
        "docs/openapi.json is stale: .venv/bin/python -m costor.server.openapi > docs/openapi.json"
    )


def test_every_api_route_asks_for_a_bearer_token_or_a_session() -> None:
    """Every /api/v1 route but the login takes a bearer token or the session cookie
    (either one: a list of two alternatives); health and metrics take none."""
    document = openapi_document()
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.startswith("/api/v1/") and path != "/api/v1/login":
                assert operation.get("security") == [{"HTTPBearer": []}, {"APIKeyCookie": []}], path
            else:
                assert "security" not in operation, path
