"""The CLI's client of a remote site's Admin API (``costor --server URL``).

The site does the work and answers the JSON documents its CLI prints with ``--json``;
this package only speaks HTTP to it: :class:`ApiClient` has one method per route the
CLI uses, and turns the API's errors back into the classes of :mod:`costor.errors`, so
a command run remotely fails with the message and exit code it has on the site.

Whom it trusts (:mod:`costor.remote.tls`): the site's certificate as pinned at first
use in the known-servers file (:mod:`costor.remote.known_servers`), as ssh pins a host
key, or a CA given by the caller. The server is untrusted otherwise: its answers are
bounded in size and checked for their shape before the CLI formats them.

It imports nothing of the local site (state, pools, configuration, use cases): an
import-linter contract holds that.
"""

from costor.remote.client import ApiClient
from costor.remote.tls import TlsTrust

__all__ = ["ApiClient", "TlsTrust"]
