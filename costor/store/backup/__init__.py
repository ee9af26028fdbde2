"""The backup room: data flowing into the pool.

- :mod:`.walk`: a local filesystem walked, read, chunked and stored (``Archiver``);
- :mod:`.stream`: a stream of entries produced on a host (the helper over SSH, or an SFTP
  walk; :mod:`costor.protocol`) turned into trees and a snapshot (``Ingest``), with
  :mod:`.sink` cutting the content that arrives and :mod:`.parent` reading what the
  parent snapshot had;
- :mod:`.common`: what both share (exclude rule, warnings, timestamps).
"""
