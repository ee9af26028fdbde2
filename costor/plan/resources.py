"""Resources: what the inventory declares, as addressed, comparable data.

A resource is ``TYPE.NAME`` (``client.web1``) with ``attributes``: the JSON form of its
validated inventory entry (profiles merged, paths resolved), where a secret appears
only as its reference (``{"env": "VAR"}``), never its value. The plan compares these
attributes with the ones recorded at the last apply.

Each type's rules live in :data:`TYPES`: the order in which apply creates them
(dependencies first; deletes run in reverse), which attributes cannot change on an
existing object, and what it depends on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from costor.config.model import Inventory, iter_secret_refs

KeyPath = tuple[str | int, ...]
SENSITIVE = "(sensitive)"


@dataclass(frozen=True)
class TypeSpec:
    table: str  # the inventory table
    # Attributes fixed when the real object is made: changing one means replacing it.
    immutable: tuple[str, ...] = ()
    # Attributes that say where the object lives (a pool's location): a change is a
    # relocation if the object is found at the new place, else a replacement.
    location: tuple[str, ...] = ()
    # Attributes that name another resource: attribute -> type (str or list of names).
    references: tuple[tuple[str, str], ...] = ()


# In creation order: a resource comes after every type it may reference.
TYPES: dict[str, TypeSpec] = {
    "site": TypeSpec("sites", references=(("replicate_to", "site"),)),
    "role": TypeSpec("roles"),
    "group": TypeSpec("groups", references=(("roles", "role"),)),
    "policy": TypeSpec("policies"),
    "pool": TypeSpec(
        "pools",
        # Both are written into the pool's identity file at init (docs/format.md):
        # blobs of another cipher or chunker would not dedup or decrypt.
        immutable=("encryption", "chunk_avg_kib"),
        location=("backend", "path", "bucket", "endpoint", "prefix"),
        references=(("site", "site"),),
    ),
    "client": TypeSpec(
        "clients", references=(("site", "site"), ("pool", "pool"), ("policy", "policy"))
    ),
    "user": TypeSpec("users", references=(("groups", "group"),)),
}
ORDER = {name: index for index, name in enumerate(TYPES)}

# Attributes added after resources of the type were first recorded, left out while at
# their default: an upgrade must not show every recorded resource as changed.
OMITTED_AT_DEFAULT: dict[str, dict[str, Any]] = {
    "pool": {"create_bucket": False},
    # A client applied before images existed recorded no ``images``: without images it
    # is unchanged (tests/plan/cases/client_without_images_recorded_before_images).
    "client": {"images": []},
}


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    attributes: dict[str, Any]
    sensitive: tuple[KeyPath, ...] = ()  # paths in attributes that hold secret references
    depends_on: tuple[str, ...] = field(default=())

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}"


def address(kind: str, name: str) -> str:
    return f"{kind}.{name}"


def split_address(text: str) -> tuple[str, str]:
    kind, _, name = text.partition(".")
    return kind, name


def desired_resources(inventory: Inventory) -> list[Resource]:
    """Every resource the inventory declares, in creation order."""
    found: list[Resource] = []
    for kind, spec in TYPES.items():
        table: dict[str, BaseModel] = getattr(inventory, spec.table)
        for name in sorted(table):
            found.append(_resource(kind, spec, table[name], inventory))
    return found


def _resource(kind: str, spec: TypeSpec, model: BaseModel, inventory: Inventory) -> Resource:
    attributes = model.model_dump(mode="json", by_alias=True, exclude={"name"})
    for key, default in OMITTED_AT_DEFAULT.get(kind, {}).items():
        if attributes.get(key) == default:
            del attributes[key]
    sensitive = []
    for path, ref in iter_secret_refs(model, ()):
        # A reference as written: {"env": "VAR"} or {"file": "/abs/path"}.
        _set(attributes, path, {"env": ref.env} if ref.env is not None else {"file": str(ref.file)})
        sensitive.append(path)
    depends: list[str] = []
    for attribute, target in spec.references:
        value = attributes.get(attribute)
        names = value if isinstance(value, list) else [value]
        for name in names:
            if isinstance(name, str) and name in getattr(inventory, TYPES[target].table):
                depends.append(address(target, name))
    return Resource(kind, str(model.name), attributes, tuple(sensitive), tuple(depends))  # type: ignore[attr-defined]


def _set(document: Any, path: KeyPath, value: Any) -> None:
    for part in path[:-1]:
        document = document[part]
    document[path[-1]] = value


# --- comparing and showing attributes ----------------------------------------------------


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode("utf-8")).hexdigest()


def masked(attributes: dict[str, Any] | None, sensitive: Iterable[KeyPath]) -> Any:
    """``attributes`` with every sensitive value replaced by ``(sensitive)``."""
    if attributes is None:
        return None
    result: Any = json.loads(canonical(attributes))
    for path in sensitive:
        parent = result
        for part in path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        last = path[-1] if path else None
        if parent is None or last is None:
            continue
        try:
            if parent[last] is not None:
                parent[last] = SENSITIVE
        except (KeyError, IndexError, TypeError):
            continue
    return result


def sensitive_mirror(attributes: dict[str, Any] | None, sensitive: Iterable[KeyPath]) -> Any:
    """Terraform's ``*_sensitive``: the same shape, ``true`` where a value is secret."""
    mirror: dict[str, Any] = {}
    if attributes is None:
        return mirror
    for path in sensitive:
        node = mirror
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        if path:
            node[str(path[-1])] = True
    return mirror


def sensitive_paths(attributes: dict[str, Any] | None) -> tuple[KeyPath, ...]:
    """The paths of recorded attributes that hold a secret reference.

    Recorded attributes come back from the state as plain JSON; a secret reference is
    the only object in them with exactly one of ``env`` / ``file``.
    """
    found: list[KeyPath] = []

    def walk(value: Any, path: KeyPath) -> None:
        if isinstance(value, dict):
            if set(value) <= {"env", "file"} and value and len(value) == 1:
                found.append(path)
                return
            for key, item in value.items():
                walk(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*path, index))

    walk(attributes or {}, ())
    return tuple(found)


def changed_fields(
    before: dict[str, Any] | None, after: dict[str, Any] | None
) -> list[tuple[KeyPath, Any, Any]]:
    """Leaf-level differences: tables are compared key by key, arrays and scalars whole."""
    changes: list[tuple[KeyPath, Any, Any]] = []

    def walk(old: Any, new: Any, path: KeyPath) -> None:
        if isinstance(old, dict) and isinstance(new, dict) and not _is_secret_ref(old, new):
            for key in sorted(set(old) | set(new)):
                walk(old.get(key), new.get(key), (*path, key))
        elif canonical(old) != canonical(new):
            changes.append((path, old, new))

    walk(before or {}, after or {}, ())
    return changes


def _is_secret_ref(old: Any, new: Any) -> bool:
    return any(set(v) <= {"env", "file"} and len(v) == 1 for v in (old, new))
