"""``costor serve``: the site daemon: scheduler ticks, claims, forked workers, heartbeats.
It logs (``costor.util.log``), never prints; the CLI verb picks the exit code."""
