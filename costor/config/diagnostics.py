"""Diagnostics: what is wrong in the inventory, and exactly where.

Validation never stops at the first error (every error, at once): every check adds
:class:`Problem` objects, which name a key path in the *merged* inventory (profiles
already applied), and :class:`SourceMap` then finds the file, line and column the key
came from — the inventory itself or a profile file. Pydantic's errors are turned into
problems here too, with messages phrased in TOML's words (table, array, key) rather than
Python's.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from costor.config.positions import KeyPath, Position, PositionMap
from costor.config.profiles import MergeProblem, Origins


@dataclass(frozen=True)
class Diagnostic:
    """One finding, printed like a compiler's: ``file:line:col: key: message``."""

    file: str
    line: int
    column: int
    key: str
    message: str
    severity: str = "error"  # "error" makes the inventory invalid; "warning" does not

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}:"
        label = "warning: " if self.severity == "warning" else ""
        key = f"{self.key}: " if self.key else ""
        return f"{where} {label}{key}{self.message}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.column, self.key, self.message)


@dataclass(frozen=True)
class Problem:
    """A finding about a key path of the merged inventory, not yet placed in a file.

    ``at_parent`` is for keys that are absent (a missing required key): the diagnostic
    names the key but points at the table that should contain it.
    """

    path: KeyPath
    message: str
    at_parent: bool = False
    severity: str = "error"


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def format_key(path: KeyPath) -> str:
    """``("clients", "web1", "paths", 0)`` -> ``clients.web1.paths[0]`` (TOML-quoted parts)."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        segment = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
        text += f".{segment}" if text else segment
    return text


class SourceMap:
    """Finds where a key of the merged inventory was written.

    Most keys come from the inventory file. A client's keys may come from profile files
    instead: ``client_origins[client][relative path]`` names the profile that supplied
    that key (``None`` = the inventory), for every key and array element the merge
    produced. Inside a profile file, a client key path relative to the client (for
    example ``("exclude", 2)``) is the path in the profile file.
    """

    def __init__(self, inventory_file: str, inventory_positions: PositionMap) -> None:
        self.inventory_file = inventory_file
        self.files: dict[str, PositionMap] = {inventory_file: inventory_positions}
        self.profile_files: dict[str, str] = {}  # profile name -> display file name
        self.client_origins: dict[str, Origins] = {}

    def add_profile(self, name: str, file: str, positions: PositionMap) -> None:
        self.profile_files[name] = file
        self.files[file] = positions

    def locate(self, path: KeyPath) -> tuple[str, Position]:
        if len(path) >= 2 and path[0] == "clients" and path[1] in self.client_origins:
            origins = self.client_origins[str(path[1])]
            relative = path[2:]
            for end in range(len(relative), -1, -1):
                if relative[:end] in origins:
                    profile = origins[relative[:end]]
                    # an array element's place in the file that wrote it (arrays from
                    # profiles and the client are concatenated)
                    written = origins.source_path(relative)
                    if profile is not None:
                        file = self.profile_files[profile]
                        return file, self.files[file].find(written)
                    path = (*path[:2], *written)
                    break
        return self.inventory_file, self.files[self.inventory_file].find(path)

    def merge_diagnostic(self, client: str, problem: MergeProblem) -> Diagnostic:
        """A finding of the profile merge, placed where its entry was written."""
        path = problem.path
        if problem.origin is None:
            file = self.inventory_file
            position = self.files[file].find(("clients", client, *path))
        else:
            file = self.profile_files[problem.origin]
            position = self.files[file].find(path)
        return Diagnostic(
            file=file,
            line=position.line,
            column=position.column,
            key=format_key(("clients", client, *path)),
            message=problem.message,
            severity=problem.severity,
        )

    def diagnostic(self, problem: Problem) -> Diagnostic:
        where = problem.path[:-1] if problem.at_parent else problem.path
        file, position = self.locate(where)
        return Diagnostic(
            file=file,
            line=position.line,
            column=position.column,
            key=format_key(problem.path),
            message=problem.message,
            severity=problem.severity,
        )


# --- pydantic errors -> problems -------------------------------------------------------

_TOML_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
}

_EXPECTED_BY_ERROR_TYPE = {
    "string_type": "a string",
    "bool_type": "a boolean (true or false)",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dataclass_type": "a table",
    "path_type": "a string (a path)",
}

_COMPARISONS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}

# Custom error types raised by the model's cross-field checks (see fields.Findings).
MISSING_ERROR = "costor_missing"
INVALID_ERROR = "costor_invalid"


def toml_type_name(value: object) -> str:
    for python_type, name in _TOML_TYPE_NAMES.items():
        if type(value) is python_type:
            return name
    return "a date/time" if hasattr(value, "isoformat") else type(value).__name__


def problems_from_validation_error(
    error: ValidationError, prefix: KeyPath, model: type[BaseModel]
) -> list[Problem]:
    """Every error pydantic found, as problems under ``prefix``.

    Quotes the offending value only where it cannot be a secret: enumerations, numbers,
    and the messages of our own validators, none of which runs on a secret key. A type
    error or an unknown key never shows its value: it might be a secret pasted in the
    wrong place.
    """
    details = error.errors(include_url=False)
    # An array whose elements are all invalid is also reported as "too short" by pydantic;
    # the element errors say it better.
    bad_arrays = {
        tuple(d["loc"][:-1]) for d in details if d["loc"] and isinstance(d["loc"][-1], int)
    }
    problems = []
    for detail in details:
        loc: KeyPath = tuple(detail["loc"])
        kind = detail["type"]
        if kind == "too_short" and loc in bad_arrays:
            continue
        ctx = detail.get("ctx") or {}
        value = detail.get("input")
        at_parent = False
        if kind == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}" + _did_you_mean(model, loc)
        elif kind in ("missing", MISSING_ERROR):
            at_parent = True
            message = (
                detail["msg"] if kind == MISSING_ERROR else f"missing required key {loc[-1]!r}"
            )
        elif kind == INVALID_ERROR:
            message = detail["msg"]
        elif kind == "literal_error":
            expected = str(ctx.get("expected", "")).replace(" or ", ", ")
            message = f"unknown value {value!r} (expected one of {expected})"
        elif kind in _EXPECTED_BY_ERROR_TYPE:
            message = f"expected {_EXPECTED_BY_ERROR_TYPE[kind]}, got {toml_type_name(value)}"
        elif kind in _COMPARISONS:
            limit = next(iter(ctx.values()), "?")
            message = f"must be {_COMPARISONS[kind]} {limit}, got {value!r}"
        elif kind == "too_short" and ctx.get("min_length") == 1:
            message = "must not be empty"
        elif kind == "value_error":
            message = str(detail["msg"]).removeprefix("Value error, ")
        else:
            text = str(detail["msg"]).replace("Input should be", "should be")
            message = text[:1].lower() + text[1:]
        problems.append(Problem(prefix + loc, message, at_parent=at_parent))
    return problems


def _did_you_mean(model: type[BaseModel], loc: KeyPath) -> str:
    """`` (did you mean 'encryption'?)`` when an unknown key is a typo of a known one."""
    owner = _model_at(model, loc[:-1])
    if owner is None or not isinstance(loc[-1], str):
        return ""
    known = [field.alias or name for name, field in owner.model_fields.items()]
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(model: type[BaseModel], loc: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the table at ``loc`` below ``model``, if any."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue  # an array element: the element type is already unwrapped below
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        current = _unwrap_model(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap_model(annotation: Any) -> Any:
    """The BaseModel inside ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, tuple, list, dict, typing.Annotated):
        for argument in typing.get_args(annotation):
            found = _unwrap_model(argument)
            if found is not None:
                return found
    return None
