"""The backend registry: every scheme parses a location, redacts it for messages and
opens its backend; the filters and staging the settings ask for are stacked around it."""

from __future__ import annotations

from pathlib import Path

import pytest

from costor.errors import UsageError
from costor.store.backends.filters import RetryingBackend, StorageFilters, VerifyingBackend
from costor.store.backends.local import LocalBackend
from costor.store.backends.registry import (
    SCHEMES,
    BackendSettings,
    open_backend,
    open_location,
    parse_location,
    redact,
    scheme_of,
)
from costor.store.backends.staging import StagingBackend

ENVIRON = {
    "COSTOR_S3_ENDPOINT": "http://127.0.0.1:9",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "very-secret-key",
    "AWS_REGION": "eu-west-3",
    "COSTOR_S3_PATH_STYLE": "1",
    "COSTOR_TOKEN": "costor_000000000000_" + "5e" * 32,
}


def examples(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """scheme -> (a location of it, its redacted form)."""
    return {
        "file": (f"file://{tmp_path}/pool", f"{tmp_path}/pool"),
        "s3": ("s3://bucket/site-a/pool/", "s3://bucket/site-a/pool"),
        "https": (
            "https://peer.example:8443/api/v1/pools/main",
            "https://peer.example:8443/api/v1/pools/main",
        ),
        "http": (
            "http://127.0.0.1:8443/api/v1/pools/main/",
            "http://127.0.0.1:8443/api/v1/pools/main",
        ),
    }


def test_every_registered_scheme_has_a_case(tmp_path: Path) -> None:
    assert set(examples(tmp_path)) == set(SCHEMES)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_each_scheme_parses_redacts_and_opens(tmp_path: Path, scheme: str) -> None:
    location, shown = examples(tmp_path)[scheme]
    settings = parse_location(location, environ=ENVIRON)
    assert settings.scheme == scheme == scheme_of(location)
    assert settings.filters is None and settings.staging is None
    assert redact(settings) == shown
    assert ENVIRON["AWS_SECRET_ACCESS_KEY"] not in redact(settings)
    assert ENVIRON["COSTOR_TOKEN"] not in redact(settings)
    backend = open_backend(settings)
    assert backend.location == shown
    assert not hasattr(backend, "inner")  # a typed location opens the bare backend


def test_a_plain_path_is_a_file_location(tmp_path: Path) -> None:
    settings = parse_location(str(tmp_path / "a" / ".." / "pool"))
    assert settings == BackendSettings(scheme="file", path=tmp_path / "pool")
    backend = open_location(str(tmp_path / "pool"))
    assert isinstance(backend, LocalBackend) and backend.root == tmp_path / "pool"


def test_s3_settings_come_from_the_environment() -> None:
    settings = parse_location("s3://bucket", environ=ENVIRON)
    assert (settings.bucket, settings.prefix) == ("bucket", "")
    assert settings.endpoint == "http://127.0.0.1:9"
    assert (settings.access_key, settings.secret_key) == ("AKIDEXAMPLE", "very-secret-key")
    assert settings.region == "eu-west-3" and settings.path_style
    bare = parse_location("s3://bucket/p", environ={"AWS_ENDPOINT_URL": "http://h:1"})
    assert bare.endpoint == "http://h:1" and bare.access_key is None and not bare.path_style


def test_malformed_and_unknown_locations() -> None:
    with pytest.raises(UsageError, match="'s3:///p': no bucket in the S3 location"):
        parse_location("s3:///p", environ={})
    with pytest.raises(UsageError) as raised:
        parse_location("ftp://peer.example/pool")
    assert str(raised.value) == (
        "'ftp://peer.example/pool': unknown location scheme "
        "(use a path, file://, s3://, https:// or http://)"
    )
    with pytest.raises(UsageError, match="the path must be /api/v1/pools/NAME"):
        parse_location("https://peer.example/pool")


def test_filters_and_staging_wrap_the_backend(tmp_path: Path) -> None:
    settings = BackendSettings(
        scheme="file",
        path=tmp_path / "pool",
        filters=StorageFilters(verify_writes=True, retry=True),
        staging=tmp_path / "staging",
    )
    stack = open_backend(settings)
    assert isinstance(stack, StagingBackend)
    assert isinstance(stack.inner, VerifyingBackend)
    assert isinstance(stack.inner.inner, RetryingBackend)
    assert isinstance(stack.inner.inner.inner, LocalBackend)
    assert stack.location == redact(settings) == str(tmp_path / "pool")
    stack.put("packs/ab/abcd", b"data")
    stack.close()
    assert (
        open_backend(BackendSettings(scheme="file", path=tmp_path / "pool")).get("packs/ab/abcd")
        == b"data"
    )


def test_no_filters_asked_is_the_backend_itself(tmp_path: Path) -> None:
    settings = BackendSettings(scheme="file", path=tmp_path, filters=StorageFilters(retry=False))
    assert isinstance(open_backend(settings), LocalBackend)
