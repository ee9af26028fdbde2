"""Saved plan files (``costor plan --out FILE``): the plan's JSON, signed.

A plan file holds no secret: values are masked and the binding carries only a keyed
digest of them. It is signed with HMAC-SHA256 under the state's plan key, so apply
can tell a plan made against this state from a hand-edited or foreign one; the key
lives in the state database, never in the file.

Layout (JSON)::

    {"costor_plan": 1, "plan": {...plan JSON...}, "signature": "hex"}
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from costor.errors import PlanFileInvalid
from costor.plan.model import FORMAT_VERSION, Plan
from costor.plan.resources import canonical

FILE_VERSION = 1


def sign(document: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, canonical(document).encode("utf-8"), hashlib.sha256).hexdigest()


def encode(plan: Plan, key: bytes) -> bytes:
    document = plan.to_json()
    body = {"costor_plan": FILE_VERSION, "plan": document, "signature": sign(document, key)}
    return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def decode(data: bytes, path: str) -> tuple[Plan, dict[str, Any], str]:
    """The plan, its JSON document and its signature; raises :class:`PlanFileInvalid`."""
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PlanFileInvalid(path=path, reason=f"not JSON ({error})") from None
    if not isinstance(body, dict) or body.get("costor_plan") != FILE_VERSION:
        raise PlanFileInvalid(path=path, reason="no 'costor_plan' marker of a known version")
    document, signature = body.get("plan"), body.get("signature")
    if not isinstance(document, dict) or not isinstance(signature, str):
        raise PlanFileInvalid(path=path, reason="no plan or no signature in it")
    major = str(document.get("format_version", "")).split(".")[0]
    if major != FORMAT_VERSION.split(".")[0]:
        raise PlanFileInvalid(
            path=path, reason=f"format_version {document.get('format_version')!r} is not 1.x"
        )
    try:
        plan = Plan.from_json(document)
    except (KeyError, TypeError, ValueError) as error:
        raise PlanFileInvalid(path=path, reason=f"malformed plan ({error!r})") from None
    return plan, document, signature


def verify(document: dict[str, Any], signature: str, key: bytes) -> bool:
    return hmac.compare_digest(sign(document, key), signature)
