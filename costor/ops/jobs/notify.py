"""Webhook notifications: one JSON POST per finished job, when the policy asks for it.

The body is the job's document (``costor jobs --json``) with ``event`` ("failure" or
"success"). The URL is a secret (webhook URLs carry their token): it is never logged,
and an error names only the URL's scheme and host. Sent with the standard library's
``urllib.request`` — one POST needs no HTTP client dependency.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from costor.config.secret import resolve_secret
from costor.ops.context import Context
from costor.ops.jobs.kinds import JOB_KINDS


def policy_for_job(ctx: Context, job: dict[str, Any]) -> Any:
    """The policy whose ``notify`` applies: the client's, for jobs whose kind targets a
    client (the table of kinds says); for pool jobs, the first policy with a ``notify``
    among the pool's clients'."""
    inventory = ctx.inventory
    kind = JOB_KINDS.get(job["kind"])
    if kind is not None and kind.target == "client":
        client = inventory.clients.get(job["target"])
        return inventory.policies.get(client.policy) if client and client.policy else None
    for client in inventory.clients.values():
        if client.pool == job["target"] and client.policy:
            policy = inventory.policies.get(client.policy)
            if policy is not None and policy.notify is not None:
                return policy
    return None


def notify_job(ctx: Context, job: dict[str, Any]) -> str | None:
    """Send the job's notification if its policy wants this outcome. Returns a short
    error (the job's outcome is not changed by a failed notification), or None."""
    event = {"succeeded": "success", "failed": "failure"}.get(job["state"])
    policy = policy_for_job(ctx, job)
    if event is None or policy is None or policy.notify is None or event not in policy.notify.on:
        return None
    try:
        url = resolve_secret(policy.notify.webhook, f"policies.{policy.name}.notify.webhook")
    except Exception as error:
        return f"webhook of policy {policy.name}: {error}"
    return post(url, {"event": event, "policy": policy.name, "job": job}, policy.notify.timeout_s)


def post(url: str, body: dict[str, Any], timeout: float) -> str | None:
    parts = urllib.parse.urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or '?'}"
    if parts.scheme not in ("http", "https"):
        return f"webhook {shown}: only http and https URLs are supported"
    request = urllib.request.Request(
        url,
        data=json.dumps(body, default=str).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "costor"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as error:
        return f"webhook {shown} answered HTTP {error.code}"
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return f"webhook {shown} not reached: {reason}"
    return None
