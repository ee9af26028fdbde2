"""Print the Admin API's OpenAPI document: the contract checked into docs/openapi.json
(tests/server/test_openapi.py fails when they differ). Regenerate it with::

    .venv/bin/python -m costor.server.openapi > docs/openapi.json
"""

from __future__ import annotations

import json
from typing import Any

from costor.server.app import create_app


def openapi_document() -> dict[str, Any]:
    return create_app("inventory.toml").openapi()  # no inventory is read to build it


def main() -> None:
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
