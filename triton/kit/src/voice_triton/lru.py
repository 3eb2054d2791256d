"""A thread-safe bounded LRU map (cachetools' LRUCache behind a lock): reference tokens, decoded references."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K")
V = TypeVar("V")


class LockedLRU(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: LRUCache[K, V] = LRUCache(maxsize=self.capacity)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)  # cachetools counts a get as a use
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
