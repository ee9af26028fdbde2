"""Registers the shared fixtures (tests/support) for every test; helpers are imported
from ``support.<module>``, never from here."""

pytest_plugins = ["support.inventory", "support.fixtures"]
