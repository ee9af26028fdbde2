"""A large file's or an image's blobs read ahead of the writer, in order.

One image is one entry: without read-ahead its restore would read, decrypt and
decompress one blob at a time on one thread. Here a few threads of a pool of its own
(so a caller already on a restore worker cannot deadlock waiting for its own pool)
read the next blobs while the writer writes the current one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from costor.store.pool import Pool

BLOBS_AHEAD = 8  # blobs read (decrypted, decompressed) ahead of the writer
READ_WORKERS = 4
MANY_BLOBS = 32  # below this, a file is read blob by blob (files are restored in parallel)


def blobs_in_order(
    pool: Pool, blobs: Sequence[bytes], *, ahead: int = BLOBS_AHEAD, workers: int = READ_WORKERS
) -> Iterator[bytes]:
    """Each blob's bytes, in order, with up to ``ahead`` of them read at once by a thread
    pool of its own (so a caller already running on a pool's worker cannot deadlock)."""
    if len(blobs) < 2:
        for blob in blobs:
            yield pool.read_blob(blob)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="restore-read") as executor:
        pending: deque[Future[bytes]] = deque()
        following = iter(blobs)
        try:
            for blob in following:
                pending.append(executor.submit(pool.read_blob, blob))
                if len(pending) >= ahead:
                    break
            while pending:
                data = pending.popleft().result()
                following_blob = next(following, None)
                if following_blob is not None:
                    pending.append(executor.submit(pool.read_blob, following_blob))
                yield data
        finally:
            for waiting in pending:
                waiting.cancel()


__all__ = ["BLOBS_AHEAD", "MANY_BLOBS", "blobs_in_order"]
