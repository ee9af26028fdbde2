"""Starting and stopping a real `costor serve` for the server's tests (on 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
from support.fixtures import Site
from support.inventory import PASSPHRASE, PASSPHRASE_ENV

ENV = {PASSPHRASE_ENV: PASSPHRASE, "COSTOR_TEST_USER_PASSWORD": "a long test password"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_serve(site: Site, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = site.process(
        "serve", "--tick", "0.2", "--listen", f"127.0.0.1:{port}", *extra, env=ENV
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"costor serve exited: {process.communicate()[1].decode()}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("costor serve did not answer /healthz")


def stop_serve(process: subprocess.Popen[bytes]) -> str:
    process.terminate()  # SIGTERM: the scheduler and the API stop together
    try:
        _out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, err.decode()
    return err.decode()
