"""Keeping pools healthy: check, forget, prune, self-test, pool copy, and pausing a site
(maintenance mode)."""
