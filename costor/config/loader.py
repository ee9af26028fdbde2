"""Reading and checking an inventory: file -> TOML -> profiles merged -> models.

Every stage adds what it finds and goes on, so that one run reports everything that is
wrong, each with its file, line and column, like ``terraform validate``:

1. read and parse the inventory (``tomllib``); a syntax error ends the run, since
   nothing after it can be trusted — it is still reported with its line and column;
2. record where every key is (:mod:`costor.config.positions`);
3. validate ``[costor]`` (it says where the profiles are), load the profile files and
   merge them into the clients that name them;
4. validate each resource on its own (one ``pools.x`` in error does not hide the errors
   of ``pools.y``), and each ``[[moved]]`` block;
5. check cross-references on the merged data (a client's ``pool`` is declared, …);
6. optionally check that every secret can be read;
7. place every problem in its file (inventory or profile) and sort.

The inventory model is built only when no error was found.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from costor.config.access import OWN_CLIENTS_ONLY
from costor.config.diagnostics import (
    Diagnostic,
    Problem,
    SourceMap,
    format_key,
    problems_from_validation_error,
    toml_type_name,
)
from costor.config.fields import NAME_PATTERN
from costor.config.model import (
    BUILTIN_ROLES,
    RESOURCE_TABLES,
    ClientConfig,
    CostorSettings,
    GroupConfig,
    Inventory,
    MovedBlock,
    PolicyConfig,
    PoolConfig,
    RemovedBlock,
    RoleConfig,
    SiteConfig,
    UserConfig,
    iter_secret_refs,
    name_problem,
)
from costor.config.positions import KeyPath, PositionMap, scan_positions
from costor.config.profiles import (
    SHIPPED_PROFILES,
    MergeProblem,
    Profile,
    find_profile_files,
    merge_client,
)
from costor.config.secret import resolve_secret, secret_file_warning
from costor.errors import InventoryInvalid, SecretUnavailable

# Tables of named resources, in the order they are validated and reported.
RESOURCE_MODELS: dict[str, type[BaseModel]] = {
    "sites": SiteConfig,
    "pools": PoolConfig,
    "clients": ClientConfig,
    "policies": PolicyConfig,
    "groups": GroupConfig,
    "users": UserConfig,
    "roles": RoleConfig,
}
TOP_LEVEL_KEYS = ("costor", *RESOURCE_MODELS, "moved", "removed")


def load_inventory(path: str | Path, *, resolve_secrets: bool = False) -> Inventory:
    """The validated inventory at ``path``; raises :class:`InventoryInvalid` on any error.

    Secrets are not read by default: a command reads the ones it needs with
    :func:`costor.config.resolve_secret` and fails then, naming the key. ``costor
    validate`` uses :func:`check_inventory`, which does check them.
    """
    inventory, diagnostics = check_inventory(path, resolve_secrets=resolve_secrets)
    if inventory is None:
        raise InventoryInvalid([d for d in diagnostics if d.severity == "error"])
    return inventory


def check_inventory(
    path: str | Path, *, resolve_secrets: bool = True
) -> tuple[Inventory | None, list[Diagnostic]]:
    """The inventory (None if it has errors) and every diagnostic, errors and warnings."""
    return _Check(path, resolve_secrets=resolve_secrets).run()


class _Check:
    """One validation run; collects problems and diagnostics as it goes."""

    def __init__(self, path: str | Path, *, resolve_secrets: bool) -> None:
        self.display = str(path)  # file names in diagnostics are shown as the user gave them
        self.file = Path(os.path.abspath(path))
        self.base_dir = self.file.parent
        self.resolve_secrets = resolve_secrets
        self.context = {"base_dir": self.base_dir}
        self.problems: list[Problem] = []  # placed through the source map at the end
        self.diagnostics: list[Diagnostic] = []  # already placed (file-level findings)
        self.source_map = SourceMap(self.display, PositionMap({}))

    # --- the stages ----------------------------------------------------------------------

    def run(self) -> tuple[Inventory | None, list[Diagnostic]]:
        text = self.read_text(self.file, self.display)
        data = self.parse_toml(text, self.display) if text is not None else None
        if text is None or data is None:
            return None, self.diagnostics
        self.source_map = SourceMap(self.display, scan_positions(text))

        for key in data:
            if key not in TOP_LEVEL_KEYS:
                hint = _did_you_mean(key, TOP_LEVEL_KEYS) or (
                    f" (expected one of {', '.join(TOP_LEVEL_KEYS)})"
                )
                self.problems.append(Problem((key,), f"unknown key {key!r}{hint}"))

        costor = self.validate(CostorSettings, data.get("costor", {}), ("costor",))
        profiles = self.load_profiles(data, costor)
        tables: dict[str, Any] = {name: data.get(name) for name in RESOURCE_MODELS}
        tables["clients"] = self.apply_profiles(tables["clients"], profiles, costor)

        resources = {
            name: self.validate_table(model, name, tables[name])
            for name, model in RESOURCE_MODELS.items()
        }
        moved = self.validate_blocks(MovedBlock, "moved", data.get("moved"))
        removed = self.validate_blocks(RemovedBlock, "removed", data.get("removed"))
        self.check_references(tables, data.get("moved"), data.get("removed"))
        if self.resolve_secrets:
            self.check_secrets({"costor": costor, **resources})

        diagnostics = self.finish()
        if costor is None or any(d.severity == "error" for d in diagnostics):
            return None, diagnostics
        inventory = Inventory(
            path=self.file,
            base_dir=self.base_dir,
            costor=costor,
            moved=moved,
            removed=removed,
            warnings=tuple(diagnostics),
            **resources,
        )
        return inventory, diagnostics

    def read_text(self, file: Path, display: str) -> str | None:
        try:
            # utf-8-sig: a byte-order mark some editors add is not a TOML error.
            return file.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            message = "file not found"
        except IsADirectoryError:
            message = "is a directory, not a file"
        except UnicodeDecodeError as error:
            line = error.object[: error.start].count(b"\n") + 1
            self.diagnostics.append(Diagnostic(display, line, 1, "", "not valid UTF-8 text"))
            return None
        except OSError as error:
            message = f"cannot read the file ({error.strerror})"
        self.diagnostics.append(Diagnostic(display, 1, 1, "", message))
        return None

    def parse_toml(self, text: str, display: str) -> dict[str, Any] | None:
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            line, column, message = decode_error_position(error, text)
            self.diagnostics.append(
                Diagnostic(display, line, column, "", f"invalid TOML: {message}")
            )
        except RecursionError:  # tomllib parses nested arrays and tables recursively
            self.diagnostics.append(Diagnostic(display, 1, 1, "", TOO_DEEP))
        return None

    def validate(self, model: type[Any], body: Any, prefix: tuple[str | int, ...]) -> Any:
        """``model`` validated from ``body``, or None with its problems recorded."""
        try:
            return model.model_validate(body, context=self.context)
        except ValidationError as error:
            self.problems.extend(problems_from_validation_error(error, prefix, model))
            return None

    def load_profiles(
        self, data: dict[str, Any], costor: CostorSettings | None
    ) -> dict[str, Profile | None]:
        """Every profile file found, by name (None: the file has errors of its own)."""
        directories = list(costor.profile_paths) if costor else [self.base_dir / "profiles"]
        explicit = isinstance(data.get("costor"), dict) and "profile_paths" in data["costor"]
        if costor is not None and explicit:
            for index, directory in enumerate(directories):
                if not directory.is_dir():
                    self.problems.append(
                        Problem(
                            ("costor", "profile_paths", index),
                            f"profile directory {directory} does not exist",
                        )
                    )

        profiles: dict[str, Profile | None] = {}
        for name, file in find_profile_files(directories, shipped=SHIPPED_PROFILES):
            display = self.display_name(file)
            if name in profiles:
                shown = profiles[name]
                first = shown.file if shown is not None else "an earlier directory"
                self.diagnostics.append(
                    Diagnostic(
                        display, 1, 1, "", f"profile {name!r} is hidden by {first}", "warning"
                    )
                )
                continue
            profiles[name] = None
            text = self.read_text(file, display)
            profile_data = self.parse_toml(text, display) if text is not None else None
            if text is None or profile_data is None:
                continue
            positions = scan_positions(text)
            if "profiles" in profile_data:
                where = positions.find(("profiles",))
                self.diagnostics.append(
                    Diagnostic(
                        display,
                        where.line,
                        where.column,
                        "profiles",
                        "a profile cannot include other profiles",
                    )
                )
                del profile_data["profiles"]
            profiles[name] = Profile(name, display, file, profile_data, positions)
            self.source_map.add_profile(name, display, positions)
        return profiles

    def apply_profiles(
        self, clients: Any, profiles: dict[str, Profile | None], costor: CostorSettings | None
    ) -> Any:
        """The clients table with each client's profiles merged in."""
        if not isinstance(clients, dict):
            return clients  # not a table: validate_table reports it
        searched = list(costor.profile_paths) if costor else [self.base_dir / "profiles"]
        directories = ", ".join(self.display_name(d) for d in searched)
        merged_clients: dict[str, Any] = {}
        for name, client in clients.items():
            if not isinstance(client, dict):
                merged_clients[name] = client  # not a table: pydantic reports it
                continue
            # Merged even without profiles: the client's own "!X" entries are read there.
            names = client.get("profiles", [])
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                names = []  # a type error pydantic reports
            chosen = []
            for index, profile_name in enumerate(names):
                if profile_name not in profiles:
                    message = (
                        f"unknown profile {profile_name!r} (no {profile_name}.toml in "
                        f"{directories}, nor among the profiles shipped with CoStor)"
                    )
                    self.problems.append(Problem(("clients", name, "profiles", index), message))
                elif (profile := profiles[profile_name]) is not None:
                    chosen.append(profile)
            found: list[MergeProblem] = []
            merged, origins = merge_client(client, chosen, found)
            self.source_map.client_origins[name] = origins
            self.diagnostics.extend(self.source_map.merge_diagnostic(name, p) for p in found)
            merged_clients[name] = merged
        return merged_clients

    def validate_table(self, model: type[BaseModel], section: str, table: Any) -> dict[str, Any]:
        """Each ``[section.NAME]`` validated on its own; the valid ones by name."""
        if table is None:
            return {}
        if not isinstance(table, dict):
            self.problems.append(
                Problem((section,), f"expected a table, got {toml_type_name(table)}")
            )
            return {}
        valid = {}
        for name, body in table.items():
            path = (section, name)
            bad_name = name_problem(name)
            if bad_name:
                self.problems.append(Problem(path, bad_name))
            if isinstance(body, dict):
                if "name" in body:
                    message = (
                        f"unknown key 'name' (a resource is named by its table: [{section}.NAME])"
                    )
                    self.problems.append(Problem((*path, "name"), message))
                # The model carries its own name, so code handed one resource knows it.
                body = {**body, "name": name}
            resource = self.validate(model, body, path)
            if resource is not None and not bad_name:
                valid[name] = resource
        return valid

    def validate_blocks(self, model: type[Any], key: str, blocks: Any) -> tuple[Any, ...]:
        """``[[moved]]`` or ``[[removed]]``: each block validated on its own."""
        if blocks is None:
            return ()
        if not isinstance(blocks, list):
            message = f"expected an array of tables ([[{key}]]), got {toml_type_name(blocks)}"
            self.problems.append(Problem((key,), message))
            return ()
        valid = (self.validate(model, block, (key, i)) for i, block in enumerate(blocks))
        return tuple(block for block in valid if block is not None)

    def check_references(self, tables: dict[str, Any], moved: Any, removed: Any) -> None:
        """Names that must refer to declared resources; done on the merged raw data so a
        reference is checked even when its table has other errors.

        Sites are always required: a pool's and a client's ``site`` must name a declared
        ``[sites.NAME]``, even in a one-site setup (one line, and no special case later
        when a second site is added).
        """
        declared = {
            section: set(table) if isinstance(table, dict) else set()
            for section, table in tables.items()
        }
        self._check_resource_references(tables, declared)
        self._check_roles(tables, declared)
        seen_from = self._check_moved(moved, declared)
        self._check_removed(removed, declared, seen_from)

    def _check_name(
        self,
        declared: dict[str, set[str]],
        path: tuple[str | int, ...],
        value: Any,
        section: str,
        what: str,
    ) -> None:
        if isinstance(value, str) and value not in declared[section]:
            hint = _did_you_mean(value, declared[section]) or _declared_hint(
                declared[section], section
            )
            self.problems.append(Problem(path, f"unknown {what} {value!r}{hint}"))

    def _check_resource_references(
        self, tables: dict[str, Any], declared: dict[str, set[str]]
    ) -> None:
        """Sites, pools, policies and groups named by pools, clients, sites and users."""

        def check(path: tuple[str | int, ...], value: Any, section: str, what: str) -> None:
            self._check_name(declared, path, value, section, what)

        for name, pool in _resources(tables["pools"]):
            check(("pools", name, "site"), pool.get("site"), "sites", "site")
        for name, client in _resources(tables["clients"]):
            check(("clients", name, "site"), client.get("site"), "sites", "site")
            check(("clients", name, "pool"), client.get("pool"), "pools", "pool")
            check(("clients", name, "policy"), client.get("policy"), "policies", "policy")
        for name, site in _resources(tables["sites"]):
            for index, peer in _items(site.get("replicate_to")):
                path = ("sites", name, "replicate_to", index)
                if peer == name:
                    self.problems.append(Problem(path, "a site cannot replicate to itself"))
                else:
                    check(path, peer, "sites", "site")
        for name, user in _resources(tables["users"]):
            for index, group in _items(user.get("groups")):
                check(("users", name, "groups", index), group, "groups", "group")

    def _check_roles(self, tables: dict[str, Any], declared: dict[str, set[str]]) -> None:
        """Declared roles do not take a built-in one's name; groups name known roles, and
        give a role meant for one's own clients (``end-user``) on named clients only."""
        for name in declared["roles"] & set(BUILTIN_ROLES):
            message = f"role {name!r} is built in and cannot be redeclared"
            self.problems.append(Problem(("roles", name), message))
        roles = declared["roles"] | set(BUILTIN_ROLES)
        for name, group in _resources(tables["groups"]):
            for index, role in _items(group.get("roles")):
                if isinstance(role, str) and role not in roles:
                    hint = _did_you_mean(role, roles) or f" (roles: {', '.join(sorted(roles))})"
                    message = f"unknown role {role!r}{hint}"
                    self.problems.append(Problem(("groups", name, "roles", index), message))
                elif role in OWN_CLIENTS_ONLY and group.get("clients") is None:
                    message = (
                        f"role {role!r} is granted on named clients only: give the group "
                        "clients = [...] (names or globs)"
                    )
                    self.problems.append(Problem(("groups", name, "roles", index), message))
            for index, pattern in _items(group.get("clients")):
                # A name without a glob that names no client grants nothing: a typo?
                if (
                    isinstance(pattern, str)
                    and NAME_PATTERN.match(pattern)
                    and (pattern not in declared["clients"])
                ):
                    hint = _did_you_mean(pattern, declared["clients"])
                    message = (
                        f"no client {pattern!r} is declared{hint}: the group grants nothing on it"
                    )
                    path = ("groups", name, "clients", index)
                    self.problems.append(Problem(path, message, severity="warning"))

    def _check_moved(self, moved: Any, declared: dict[str, set[str]]) -> set[str]:
        """``[[moved]]`` blocks: each address moved once, from a name no longer declared,
        to one that is (or that moves on); the addresses moved from."""
        seen_from: set[str] = set()
        for index, block in _items(moved):
            if not isinstance(block, dict):
                continue
            source, target = block.get("from"), block.get("to")
            if isinstance(source, str):
                if source in seen_from:
                    message = f"{source!r} is moved more than once"
                    self.problems.append(Problem(("moved", index, "from"), message))
                seen_from.add(source)
                if _is_declared(source, declared):
                    message = f"{source!r} is still declared; after a move it exists only as 'to'"
                    self.problems.append(Problem(("moved", index, "from"), message))
            moved_on = any(
                isinstance(other, dict) and other.get("from") == target
                for _i, other in _items(moved)
            )
            if (
                isinstance(target, str)
                and _parse_address(target)
                and not _is_declared(target, declared)
                and not moved_on  # a step of a chain (a -> b, b -> c)
            ):
                message = f"{target!r} is not declared in the inventory"
                self.problems.append(Problem(("moved", index, "to"), message))
        return seen_from

    def _check_removed(
        self, removed: Any, declared: dict[str, set[str]], seen_from: set[str]
    ) -> None:
        """``[[removed]]`` blocks: each address removed once, no longer declared, and
        not also moved."""
        seen_removed: set[str] = set()
        for index, block in _items(removed):
            source = block.get("from") if isinstance(block, dict) else None
            if not isinstance(source, str):
                continue
            where: KeyPath = ("removed", index, "from")
            if source in seen_removed:
                self.problems.append(Problem(where, f"{source!r} is removed more than once"))
            seen_removed.add(source)
            if _is_declared(source, declared):
                message = f"{source!r} is still declared; remove its table to remove it"
                self.problems.append(Problem(where, message))
            elif source in seen_from:
                message = f"{source!r} is also the 'from' of a [[moved]] block"
                self.problems.append(Problem(where, message))

    def check_secrets(self, resources: dict[str, Any]) -> None:
        for section, value in resources.items():
            for path, ref in iter_secret_refs(value, (section,)):
                try:
                    resolve_secret(ref, format_key(path))
                except SecretUnavailable as error:
                    reason = error.fields.get("reason", "unavailable")
                    self.problems.append(Problem(path, f"secret not available: {reason}"))
                    continue
                warning = secret_file_warning(ref)
                if warning:
                    self.problems.append(Problem(path, warning, severity="warning"))

    def finish(self) -> list[Diagnostic]:
        placed = self.diagnostics + [self.source_map.diagnostic(p) for p in self.problems]
        unique = list(dict.fromkeys(placed))
        # The inventory first, then profile files; inside a file, in reading order.
        return sorted(unique, key=lambda d: (d.file != self.display, *d.sort_key()))

    def display_name(self, file: Path) -> str:
        """A profile file as the user would name it from where the inventory was named."""
        try:
            relative = file.relative_to(self.base_dir)
        except ValueError:
            return str(file)
        return str(Path(self.display).parent / relative)


# --- helpers ---------------------------------------------------------------------------

_TOML_ERROR_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


TOO_DEEP = "invalid TOML: arrays or inline tables are nested too deeply to read"


def decode_error_position(error: tomllib.TOMLDecodeError, text: str) -> tuple[int, int, str]:
    """Line, column and message of a tomllib error (3.11 puts them in the message)."""
    message = str(error)
    line = column = 0
    match = _TOML_ERROR_AT.search(message)
    if match:
        line, column = int(match.group(1)), int(match.group(2))
        message = message[: match.start()]
    elif message.endswith("(at end of document)"):
        message = message.removesuffix("(at end of document)").strip()
        line = text.count("\n") + 1
        column = len(text) - (text.rfind("\n") + 1) + 1
    message = message[:1].lower() + message[1:]
    return max(line, 1), max(column, 1), message


def _did_you_mean(value: str, choices: Any) -> str:
    close = difflib.get_close_matches(value, sorted(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _declared_hint(declared: set[str], section: str) -> str:
    if not declared:
        return f" (no [{section}.NAME] is declared)"
    names = sorted(declared)
    shown = ", ".join(names[:8]) + (", …" if len(names) > 8 else "")
    return f" (declared: {shown})"


def _resources(table: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(name, body)`` of a table of resources, skipping what is not a table."""
    if isinstance(table, dict):
        for name, body in table.items():
            if isinstance(body, dict):
                yield name, body


def _items(value: Any) -> Iterator[tuple[int, Any]]:
    return enumerate(value) if isinstance(value, list) else iter(())


_ADDRESS = re.compile(r"^(" + "|".join(RESOURCE_TABLES) + r")\.(.+)$")


def _parse_address(address: str) -> tuple[str, str] | None:
    match = _ADDRESS.match(address)
    return (RESOURCE_TABLES[match.group(1)], match.group(2)) if match else None


def _is_declared(address: str, declared: dict[str, set[str]]) -> bool:
    parsed = _parse_address(address)
    return parsed is not None and parsed[1] in declared.get(parsed[0], set())
