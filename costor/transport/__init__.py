"""Transports to remote hosts: SSH (asyncssh) and the helper shipped over it.

Only this package imports asyncssh. It knows nothing of pools or the state: ``ops``
joins a remote session to the engine.
"""
