"""The value types the inventory's models are built from, and their base.

- :class:`FrozenModel`: every table's base (unknown keys forbidden, frozen); and
  :class:`Findings`, which collects a table's cross-key problems so they are reported
  together, each at its own key.
- Validated strings: resource names (a safe alphabet, since names become paths),
  absolute client paths, cron schedules, durations, percentages, ``KIND.NAME`` addresses;
  paths on this machine resolved against the inventory's directory.
- :class:`SecretRef`: where a secret is kept, never the secret itself.

The table models are in :mod:`costor.config.model` (pools, clients, sites, policies, the
whole inventory) and :mod:`costor.config.access` (roles, groups, users).
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from costor.config.diagnostics import INVALID_ERROR, MISSING_ERROR
from costor.config.positions import KeyPath

# Names are addresses (``client.web1``) and may become file or directory names, so they
# are kept to a safe alphabet: no "/", no "..", no leading dot or dash.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# The kinds of resource a ``[[moved]]`` address can name -> their inventory table.
RESOURCE_TABLES = {
    "site": "sites",
    "pool": "pools",
    "client": "clients",
    "policy": "policies",
    "group": "groups",
    "user": "users",
    "role": "roles",
}

LITERAL_SECRET_MESSAGE = "secrets must be { env = … } or { file = … }, never literal"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a resource name, or None if it can."""
    if NAME_PATTERN.match(name) and ".." not in name:
        return None
    return (
        f"invalid name {name!r}: use up to 63 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Findings:
    """Collects the cross-field problems of one table so they are all reported at once.

    Raising a ``ValidationError`` from a validator makes pydantic merge its line errors
    into the outer error, with ``loc`` relative to this model: each finding lands on its
    own key. The custom error types are mapped back to messages in
    :func:`costor.config.diagnostics.problems_from_validation_error`.
    """

    def __init__(self, model: BaseModel) -> None:
        self.title = type(model).__name__
        self.errors: list[InitErrorDetails] = []

    def missing(self, key: str, why: str) -> None:
        self._add(MISSING_ERROR, key, f"missing required key {key!r} ({why})")

    def invalid(self, key: str | tuple[str | int, ...], message: str) -> None:
        """``key``: a key of this table, or a path below it (``("images", 2)``)."""
        self._add(INVALID_ERROR, key, message)

    def _add(self, kind: str, key: str | tuple[str | int, ...], message: str) -> None:
        # The template is "{message}" so braces in messages are never parsed as fields.
        error = PydanticCustomError(kind, "{message}", {"message": message})
        loc = (key,) if isinstance(key, str) else key
        self.errors.append(InitErrorDetails(type=error, loc=loc, input=None))

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationError.from_exception_data(self.title, self.errors)


def inventory_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return Path(base) if base is not None else Path.cwd()


def resolve_local_path(value: Any, info: ValidationInfo) -> Any:
    """A path on this machine: relative to the inventory's directory, made absolute.

    Only strings are resolved; anything else is left for pydantic to reject with a
    type error. ``normpath`` rather than ``resolve()``: no symlinks are followed and the
    path need not exist yet (the state dir and a new pool are created by ``apply``).
    """
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be empty")
        return Path(os.path.normpath(inventory_dir(info) / value))
    return value


def _absolute_client_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    # "//srv" and "/srv/" name the same directory as "/srv"; keep one spelling.
    return "/" + posixpath.normpath(value).lstrip("/")


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")
_CRON_NICKNAMES = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)


def _cron_schedule(value: str) -> str:
    """Shape check only (5 fields or a nickname); the scheduler parses it fully."""
    fields = value.split()
    if value.strip() in _CRON_NICKNAMES or (
        len(fields) == 5 and all(_CRON_FIELD.match(field) for field in fields)
    ):
        return " ".join(fields) if len(fields) == 5 else value.strip()
    raise ValueError(
        f"invalid schedule {value!r} (expected 5 cron fields like '0 2 * * *', or '@daily')"
    )


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1w"`` or plain seconds, as seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"expected a duration like '30m', '1h' or '2d', got {text!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _duration(value: str) -> str:
    duration_seconds(value)
    return value.strip()


def percentage_fraction(text: str) -> float:
    return float(text.strip().removesuffix("%")) / 100


_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def _percentage(value: str) -> str:
    match = _PERCENT.match(value.strip())
    if not match or not 0 < float(match.group(1)) <= 100:
        raise ValueError(f"expected a percentage between 0% and 100% like '5%', got {value!r}")
    return value.strip()


_ADDRESS = re.compile(r"^(" + "|".join(RESOURCE_TABLES) + r")\.(.+)$")


def _address(value: str) -> str:
    match = _ADDRESS.match(value)
    if not match or name_problem(match.group(2)):
        kinds = ", ".join(RESOURCE_TABLES)
        raise ValueError(f"invalid address {value!r} (expected KIND.NAME with KIND one of {kinds})")
    return value


AbsoluteClientPath = Annotated[StrictStr, AfterValidator(_absolute_client_path)]
NonEmptyStr = Annotated[StrictStr, AfterValidator(_non_empty)]
CronSchedule = Annotated[StrictStr, AfterValidator(_cron_schedule)]
Percentage = Annotated[StrictStr, AfterValidator(_percentage)]
Duration = Annotated[StrictStr, AfterValidator(_duration)]
Address = Annotated[StrictStr, AfterValidator(_address)]


# --- secrets ---------------------------------------------------------------------------


class SecretRef(FrozenModel):
    """Where a secret is kept: ``{ env = "NAME" }`` or ``{ file = "PATH" }``.

    Never the secret itself: a literal value in a committed file is an error, and the
    value is read only when needed, by :func:`costor.config.secret.resolve_secret`. Its
    repr shows the variable name or file path, which are not secret.
    """

    env: NonEmptyStr | None = None
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_literal(cls, data: Any) -> Any:
        # The message must not quote `data`: it is probably the secret.
        if not isinstance(data, dict):
            raise ValueError(LITERAL_SECRET_MESSAGE)
        return data

    @field_validator("file", mode="before")
    @classmethod
    def _resolve_file(cls, value: Any, info: ValidationInfo) -> Any:
        return resolve_local_path(value, info)

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret needs exactly one of 'env' or 'file'")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env is not None else f"file {self.file}"


def iter_secret_refs(value: Any, path: KeyPath) -> Iterator[tuple[KeyPath, SecretRef]]:
    """Walk models, dicts and tuples below ``path`` and yield each SecretRef found."""
    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for field_name, field in type(value).model_fields.items():
            key = field.alias or field_name
            yield from iter_secret_refs(getattr(value, field_name), (*path, key))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_secret_refs(item, (*path, key))
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            yield from iter_secret_refs(item, (*path, index))
