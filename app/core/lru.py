"""A small thread-safe LRU whose loader runs once per key (the visualisations' models and test sets)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LoadingLRU(Generic[K, V]):
    """A thread-safe LRU whose loader runs once per key even when several threads ask together."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[K, V] = OrderedDict()
        self._loading: dict[K, threading.Lock] = {}
        self._lock = threading.Lock()
        self.loads = 0  # how often a loader ran (the tests check cache hits with it)

    def get(self, key: K, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # the second thread waits here, then finds the first one's value
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = load()
            with self._lock:
                self.loads += 1
                self._items[key] = value
                self._loading.pop(key, None)
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.loads = 0
