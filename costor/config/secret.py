"""Reading a secret that the inventory refers to (``{ env = … }`` or ``{ file = … }``).

The value is read only here, only when asked, and never stored in the model, a plan or
an error: errors name the key (``pools.main.passphrase``) and where the secret was
expected (variable name, file path), nothing of the content.
"""

from __future__ import annotations

import os
import stat

from costor.config.model import SecretRef
from costor.errors import SecretUnavailable


def resolve_secret(ref: SecretRef, key: str) -> str:
    """The secret's value; ``key`` names the inventory key for error messages.

    A file's content loses one trailing newline (editors add one), nothing else: a
    passphrase may legitimately end in spaces. An empty secret is refused, it is always
    a mistake. Raises :class:`SecretUnavailable`.
    """
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretUnavailable(key=key, reason=f"environment variable {ref.env} is not set")
    else:
        assert ref.file is not None  # SecretRef guarantees exactly one of env / file
        try:
            value = ref.file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SecretUnavailable(key=key, reason=f"file {ref.file} does not exist") from None
        except PermissionError:
            raise SecretUnavailable(
                key=key, reason=f"file {ref.file} is not readable (permission denied)"
            ) from None
        except UnicodeDecodeError:
            # `from None`: the decode error carries the raw bytes, i.e. the secret.
            raise SecretUnavailable(key=key, reason=f"file {ref.file} is not UTF-8 text") from None
        except OSError as error:
            raise SecretUnavailable(
                key=key, reason=f"file {ref.file} cannot be read ({error.strerror})"
            ) from None
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise SecretUnavailable(key=key, reason=f"{ref.describe()} is empty")
    return value


def secret_file_warning(ref: SecretRef) -> str | None:
    """A warning if a secret file is readable by group or others (like ssh's check)."""
    if ref.file is None:
        return None
    try:
        mode = ref.file.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        return f"secret file {ref.file} is readable by other users (mode {stat.S_IMODE(mode):04o})"
    return None
