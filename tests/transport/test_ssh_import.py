"""asyncssh's optional libraries are looked up by file name while it is imported
(costor/transport/ssh.py): the same answers as the loader's for what is there, none for
what is not, without running ldconfig, gcc or ld (~50-80 ms a new process)."""

from __future__ import annotations

import ctypes
import ctypes.util
import subprocess
import sys

import pytest

from costor.transport import ssh

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux loader")


def test_a_present_library_is_found_by_its_soname_and_loads() -> None:
    name = ssh._library_file("c")
    assert name is not None and name.startswith("libc.so.")
    ctypes.CDLL(name)  # the loader finds what was named


def test_an_absent_library_is_none() -> None:
    assert ssh._library_file("costor-no-such-library") is None


def test_the_lookup_is_asyncssh_imports_only() -> None:
    """After the import, find_library is ctypes' own again (a fresh process: asyncssh
    imported under the lookup, and its libraries found as ctypes finds them)."""
    code = (
        "import ctypes.util; original = ctypes.util.find_library\n"
        "import costor.transport.ssh\n"
        "from asyncssh.crypto import umac\n"
        "assert ctypes.util.find_library is original\n"
        "found = original('nettle')\n"
        "assert (umac._nettle_lib is None) == (found is None), (umac._nettle_lib, found)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
