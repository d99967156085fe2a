"""A streamed reader's cache of inner chunks: one preallocated array of chunk slots, least recently used evicted.

Holding the chunks in one array, not one array per chunk, makes a batch's gather one vectorized ``np.take`` over
every cached chunk it touches (a uniform order touches dozens per batch: a per-chunk loop cost more than the
copies), and a chunk read again lands in the buffer of the one it evicts instead of fresh pages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np


class ChunkSlab:
    """``capacity`` slots of one inner chunk each (``chunk_shape``, ``dtype``), keyed by chunk id, LRU-evicted."""

    def __init__(self, capacity: int, chunk_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.capacity = capacity
        self.rows = chunk_shape[0]
        self.data = np.empty((capacity * self.rows, *chunk_shape[1:]), dtype=dtype)  # pages are touched on use
        self._slots: OrderedDict[int, int] = OrderedDict()
        self._free = list(range(capacity - 1, -1, -1))

    def __contains__(self, cid: int) -> bool:
        return cid in self._slots

    def cached(self) -> np.ndarray:
        """Ids of the chunks held now."""
        return np.fromiter(self._slots, dtype=np.int64, count=len(self._slots))

    def block(self, slot: int) -> np.ndarray:
        """The chunk in ``slot`` (a view: valid until the slot is reused)."""
        return self.data[slot * self.rows : (slot + 1) * self.rows]

    def slot(self, cid: int, load: Callable[[int, np.ndarray], None]) -> int:
        """The slot holding chunk ``cid``; a chunk not held is loaded by ``load(cid, view)`` into a free slot, or into
        the least recently used one's. A ``load`` that raises leaves the slot free."""
        if cid in self._slots:
            self._slots.move_to_end(cid)
            return self._slots[cid]
        if not self._free:
            self._free.append(self._slots.popitem(last=False)[1])
        slot = self._free.pop()
        try:
            load(cid, self.block(slot))
        except BaseException:
            self._free.append(slot)
            raise
        self._slots[cid] = slot
        return slot

    def gather(self, index: np.ndarray, views: np.ndarray | None, out: np.ndarray, sel: np.ndarray | None) -> None:
        """``out[sel]`` (all of ``out`` when ``sel`` is None) = rows ``index`` of the slab, or with ``views`` view
        ``views[j]`` of row ``index[j]``: one ``np.take``."""
        flat = self.data
        if views is not None:
            flat = self.data.reshape(-1, *self.data.shape[2:])
            index = index * self.data.shape[1] + views
        if sel is None:
            np.take(flat, index, axis=0, out=out)
        else:
            out[sel] = np.take(flat, index, axis=0)
