"""Test support: the helpers and fixtures every test package shares. tests/conftest.py
registers the fixture modules with ``pytest_plugins``; test modules import helpers as
``from support.<module> import ...`` (tests/ is on sys.path through that conftest).

* fixtures.py: ``Site`` (an inventory driven through the CLI), ``tree_digest``,
  ``make_pool``/``open_pool``, ``run_in_pty``; the ``source``, ``site``, ``applied`` and
  ``state_url`` fixtures.
* inventory.py: the one builder of test inventories: tables (``site_table``,
  ``local_pool``, ``s3_pool``, ``client_table``, ``ssh_client``), writers
  (``write_tables``, ``rewrite_tables`` which keeps the ``[costor]`` table,
  ``write_local_inventory``, ``cut_at``), the config tests' ``write_inventory`` fixture,
  and the per-inventory PostgreSQL databases.
* sshd.py (with ``ssh_site``), s3servers.py, loopdev.py: real servers and devices, whose
  fixtures are imported by the modules that use them; faults.py: a fault-injecting backend.
"""
