"""Test support: the helpers and fixtures every test package shares (tests/conftest.py
registers the fixture modules with ``pytest_plugins``; test modules import helpers as
``from support.<module> import ...``, tests/ being on sys.path through that conftest).

* fixtures.py: ``Site`` (an inventory driven through the CLI), ``tree_digest``, pools,
  the ``source``/``site``/``applied``/``state_url`` fixtures.
* inventory.py: the one builder of test inventories, and the per-inventory PostgreSQL
  databases.
* sshd.py, s3servers.py, loopdev.py: real servers and devices (their fixtures are
  imported by the modules that use them); faults.py: a fault-injecting backend.
"""
