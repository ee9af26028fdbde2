"""Restore: a snapshot's trees back out of the pool, to a directory (``directory``) or
as one tar, tar.zst or zip archive (``archive``)."""
