"""Host bookkeeping of the device's embedding arena: which rows hold whose placeholder embeddings.

The device runner keeps every request's placeholder embeddings in an arena of
``StepShapes.embedding_rows`` rows per replica, so they never travel back to
the host; a step gathers them on the device by row index. Here, on the host,
a request is given arena rows (in blocks, like KV pages, so the arena never
fragments) when its items are encoded, and gives them back when its prefill
is done, when it is preempted, and when it finishes or is aborted. The arena
holds ``max_num_seqs`` prompts at the limit per replica, so a running
request's rows are always free to take.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from mmjax.engine.shapes import EMBEDDING_BLOCK_ROWS, StepShapes
from mmjax.kv_cache import PageAllocator


class EmbeddingRows:
    """Arena rows of each data replica, handed out per request."""

    def __init__(self, shapes: StepShapes):
        blocks = shapes.embedding_rows // EMBEDDING_BLOCK_ROWS
        self.rows_per_prompt = (blocks - 1) // shapes.max_num_seqs * EMBEDDING_BLOCK_ROWS if blocks else 0
        self._allocators = [PageAllocator(blocks, EMBEDDING_BLOCK_ROWS) for _ in range(shapes.num_replicas)] \
            if blocks else []
        self._replica_of: dict[Hashable, int] = {}

    def assign(self, request_id: Hashable, replica: int, num_rows: int) -> np.ndarray:
        """Rows for ``num_rows`` embeddings of ``request_id`` on ``replica``: i32 ``[num_rows]``.

        Raises:
          OutOfPagesError: the arena is full (it cannot be while the rows of finished prefills are released).
        """
        if request_id in self._replica_of:
            raise ValueError(f"request {request_id!r} already holds arena rows")
        slots = self._allocators[replica].allocate(request_id, num_rows)
        self._replica_of[request_id] = replica
        return np.asarray(slots, np.int32)

    def release(self, request_id: Hashable) -> None:
        """Give back ``request_id``'s rows, if it holds any."""
        replica = self._replica_of.pop(request_id, None)
        if replica is not None:
            self._allocators[replica].free(request_id)

    @property
    def num_held(self) -> int:
        """Requests holding rows (0 when every prefill is done)."""
        return len(self._replica_of)
