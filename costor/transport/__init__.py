"""Reaching hosts: SSH (``ssh.py``, asyncssh), the helper shipped over it (``helper.py``)
and the site's side of its frames (``helper_session.py``), the SFTP walk for hosts
without python3 (``sftp.py``), and the shape of what a walk feeds (``source.py``).

Only this package imports asyncssh (an import-linter contract). It knows nothing of
pools or the state: ``ops`` joins a remote session to the engine.
"""
