"""The one error tree: every CostorError carries an exit code the CLI documents and an
HTTP status the server will answer with."""

from __future__ import annotations

import importlib
import pkgutil

import costor
from costor import errors
from costor.errors import CostorError

DOCUMENTED_EXIT_CODES = {1, 3, 6}  # plan's 2 and 4 are outcomes, not errors; 6: a changed TLS pin


def _every_error_class() -> list[type[CostorError]]:
    for module in pkgutil.walk_packages(costor.__path__, "costor."):
        if module.name.endswith((".helper", ".__main__")):
            continue  # the shipped helper runs on hosts; __main__ runs the CLI
        importlib.import_module(module.name)
    found: list[type[CostorError]] = []
    pending: list[type[CostorError]] = [CostorError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_error_has_a_documented_exit_code_and_an_http_status() -> None:
    classes = _every_error_class()
    assert len(classes) > 40
    for cls in classes:
        assert cls.exit_code in DOCUMENTED_EXIT_CODES, cls
        assert 400 <= cls.http_status <= 599, cls
        assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} has no message template"


def test_statuses_say_whose_fault_it_is() -> None:
    assert errors.UsageError.http_status == 400
    assert errors.SnapshotNotFound.http_status == 404
    assert errors.UnknownResource.http_status == 404
    assert errors.StateLocked.http_status == 409
    assert errors.PlanStale.http_status == 409
    assert errors.InventoryInvalid.http_status == 422
    assert errors.HostUnreachable.http_status == 502
    assert errors.BackendThrottled.http_status == 503
    assert errors.WrongPassphrase.http_status == 503
    assert errors.StorageFull.http_status == 507
    assert errors.DataCorruption.http_status == 500 and errors.DataCorruption.exit_code == 3
