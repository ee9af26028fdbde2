"""The former name of :mod:`costor.transport`, kept only for the apply's
``from costor.remote.ssh import HostKey`` (costor/ops/apply_change.py); it goes once
that line names ``costor.transport.ssh``."""
