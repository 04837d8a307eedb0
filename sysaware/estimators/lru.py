"""A bounded least-recently-used map: what the decision path remembers (embeddings, F_len answers) per process.

A serving process sees an endless stream of new tasks; an unbounded dict would grow with every one of them. Evicting
the least recently used entry keeps a running workflow's task (touched at each of its steps) and drops finished ones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """``get`` / ``put`` with at most ``max_entries`` entries (``None``: unbounded, for training's known texts)."""

    def __init__(self, max_entries: int | None) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be >= 1 or None, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None and self.max_entries is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        if self.max_entries is not None:
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def items(self):
        return self._data.items()
