"""The applied configuration, and where the state is when the inventory is broken.

Apply is the gate (docs/plan-apply.md, "What runs is what was applied"): backups, hooks,
schedules and retention run from the configuration ``costor apply`` recorded in the
state, never from the working copy of the inventory on disk. This module turns those
recorded attributes (the JSON the plan compared: profiles merged, paths resolved,
secrets as references) back into the same typed :class:`Inventory` the rest of CoStor
reads, so a job cannot tell the two apart.

It also finds ``[costor]`` (the state directory and database) in an inventory that
does not validate, so that a typo saved in the working inventory never stops the
site: the daemon and the read-only verbs still find the state and run what was applied.

Pure: the caller reads the recorded rows; nothing here touches the database.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from costor.config.loader import RESOURCE_MODELS, check_inventory
from costor.config.model import RESOURCE_TABLES, CostorSettings, Inventory
from costor.errors import ConfigError, InventoryInvalid


class AppliedStateUnreadable(ConfigError):
    """The applied configuration of {address} cannot be read ({reason}); run `costor plan` and `costor apply` again."""

    http_status = 500


def applied_inventory(
    *,
    path: Path,
    base_dir: Path,
    settings: CostorSettings,
    resources: Iterable[tuple[str, str, dict[str, Any]]],
) -> Inventory:
    """The inventory as applied: ``resources`` are ``(type, name, attributes)`` as
    recorded by apply (``ResourceRow.applied``). ``[costor]`` comes from the working
    inventory (it says where the state is, so it cannot itself live in the state)."""
    tables: dict[str, dict[str, BaseModel]] = {table: {} for table in RESOURCE_MODELS}
    for kind, name, attributes in resources:
        table = RESOURCE_TABLES.get(kind)
        if table is None:
            continue  # a type this version does not know: nothing here runs it
        model = RESOURCE_MODELS[table]
        try:
            tables[table][name] = model.model_validate(
                {**_written(model, attributes), "name": name}, context={"base_dir": base_dir}
            )
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            reason = f"{where}: {first.get('msg', 'invalid')}" if where else str(error)
            raise AppliedStateUnreadable(address=f"{kind}.{name}", reason=reason) from None
    return Inventory(path=path, base_dir=base_dir, costor=settings, **tables)  # type: ignore[arg-type]


def _written(model: type[BaseModel], attributes: dict[str, Any]) -> dict[str, Any]:
    """The recorded attributes that differ from the model's defaults: a key at its
    default was not written in the inventory, and cross-field checks (a key that does
    not apply to a backend) must see it as unwritten again."""
    written = {}
    for key, value in attributes.items():
        field = model.model_fields.get(key)
        if field is None:
            continue  # an attribute an older version recorded and this one dropped
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            try:
                if to_jsonable_python(default) == value:
                    continue
            except Exception:  # noqa: BLE001 - a default that has no JSON form is kept
                pass
        written[key] = value
    return written


# --- [costor] of an inventory that may not validate -------------------------------------

_TABLE_HEADER = re.compile(r"^\s*\[{1,2}\s*([^\]]+?)\s*\]{1,2}\s*(#.*)?$")


def load_settings(path: str | Path) -> CostorSettings:
    """``[costor]`` of the inventory at ``path``, read even when the rest of the file
    does not validate or does not parse. Raises :class:`InventoryInvalid` only when
    ``[costor]`` itself is wrong (then the state cannot be found)."""
    file = Path(os.path.abspath(path))
    base_dir = file.parent
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        _inventory, diagnostics = check_inventory(path, resolve_secrets=False)
        raise InventoryInvalid([d for d in diagnostics if d.severity == "error"]) from None
    try:
        data = tomllib.loads(text)
        body = data.get("costor", {})
    except (tomllib.TOMLDecodeError, RecursionError):  # too deep: as not valid TOML
        body = _costor_table(text)
    try:
        return CostorSettings.model_validate(body, context={"base_dir": base_dir})
    except ValidationError:
        # The full check names file, line and column of what is wrong in [costor].
        _inventory, diagnostics = check_inventory(path, resolve_secrets=False)
        errors = [d for d in diagnostics if d.severity == "error" and d.key.startswith("costor")]
        raise InventoryInvalid(
            errors or [d for d in diagnostics if d.severity == "error"]
        ) from None


def _costor_table(text: str) -> dict[str, Any]:
    """``[costor]`` cut out of a file that is not valid TOML as a whole: its lines up
    to the next table header, parsed alone. An empty table (the defaults) when it
    cannot be found or does not parse either."""
    lines = text.splitlines()
    start = None
    for index, line in enumerate(lines):
        match = _TABLE_HEADER.match(line)
        if match and match.group(1) == "costor" and not line.lstrip().startswith("[["):
            start = index + 1
            break
    if start is None:
        return {}
    end = next((i for i in range(start, len(lines)) if _TABLE_HEADER.match(lines[i])), len(lines))
    try:
        body = tomllib.loads("\n".join(lines[start:end]))
    except (tomllib.TOMLDecodeError, RecursionError):
        return {}
    return body
