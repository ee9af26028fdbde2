"""BLAKE3's threaded mode and fork: a child of a process that started the thread pool
hashes on one thread instead of hanging; a process that forks workers keeps the pool
for them (costor/util/hashthreads.py). Each case runs in a fresh interpreter (this one
may have started its pool already), under a timeout: a hang fails the test."""

from __future__ import annotations

import subprocess
import sys

import blake3

CASE = """
import os, sys
import blake3
from costor.util import hashthreads
data = os.urandom(8 << 20)
if sys.argv[1] == "refuse":
    hashthreads.keep_fork_safe()
parent = hashthreads.max_threads()
blake3.blake3(data, max_threads=parent).hexdigest()   # starts the pool if threaded
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    threads = hashthreads.max_threads()
    digest = blake3.blake3(data, max_threads=threads).hexdigest()
    ok = digest == blake3.blake3(data).hexdigest()
    os.write(write, f"{threads} {ok}".encode())
    os._exit(0)
os.waitpid(pid, 0)
print(parent, os.read(read, 100).decode())
"""


def run_case(mode: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", CASE, mode], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_child_of_a_process_with_a_thread_pool_hashes_on_one_thread() -> None:
    parent, child, ok = run_case("plain")
    assert int(parent) == blake3.blake3.AUTO and child == "1" and ok == "True"


def test_a_forking_process_leaves_the_pool_to_its_children() -> None:
    parent, child, ok = run_case("refuse")
    assert parent == "1" and int(child) == blake3.blake3.AUTO and ok == "True"
