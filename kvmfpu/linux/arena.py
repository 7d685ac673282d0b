"""Kernel memory for fpstate buffers and guest memory.

One anonymous mapping serves as the emulated core's memory, so the kernel's XSAVES and
XRSTORS run on fpstate buffers at their own addresses (which XSAVEOPT/XSAVES' modified
optimisation depends on). Pages cost nothing until touched, but the mapping counts
against RLIMIT_AS (``ulimit -v``), so it starts small and grows by need: a larger mapping
takes the used bytes at the same offsets and every holder of the old view is told
(``on_move``). An arena nobody rebinds does not grow (OutOfArena instead).
"""

from __future__ import annotations

import contextlib
import mmap
import weakref
from collections.abc import Callable

#: The first mapping (16 MiB: a VM with a few vCPUs and its guest memory fits many times).
INITIAL_SIZE = 16 << 20
#: The largest arena (address space, not memory: untouched pages cost nothing).
MAX_SIZE = 1 << 40
ALIGN = 64
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0)


class OutOfArena(MemoryError):
    pass


def _map(size: int) -> mmap.mmap:
    try:
        return mmap.mmap(-1, size, flags=_FLAGS)
    except OSError as exc:        # ENOMEM under RLIMIT_AS or overcommit limits
        raise OutOfArena(f"cannot map an arena of {size} bytes: {exc.strerror}") from None


class Arena:
    """``size`` fixes the arena (it never grows); by default it starts at INITIAL_SIZE and
    doubles by need up to ``max_size`` while some holder rebinds its views."""

    def __init__(self, size: int | None = None, *, max_size: int = MAX_SIZE):
        self.max_size = size if size is not None else max_size
        self.size = size if size is not None else min(INITIAL_SIZE, max_size)
        self.map = _map(self.size)
        self.view = memoryview(self.map)
        self._top = 4096            # address 0 stays unused, like NULL
        self._free: dict[int, list[int]] = {}
        self._movers: list[weakref.WeakMethod[Callable[[memoryview], None]]] = []

    def on_move(self, rebind: Callable[[memoryview], None]) -> None:
        """Call the bound method ``rebind(new_view)`` whenever the arena moves to a larger
        mapping (held weakly: the arena keeps no holder alive)."""
        self._movers.append(weakref.WeakMethod(rebind))

    def _live_movers(self) -> list[Callable[[memoryview], None]]:
        live = [m() for m in self._movers]
        return [m for m in live if m is not None]

    def alloc(self, size: int) -> int:
        """A zeroed, 64-byte aligned block (vzalloc)."""
        size = (size + ALIGN - 1) & ~(ALIGN - 1)
        free = self._free.get(size)
        if free:
            off = free.pop()
            self.view[off:off + size] = bytes(size)
            return off
        off = self._top
        if off + size > self.size:
            self._grow(off + size)
        self._top = off + size
        return off

    def _grow(self, need: int) -> None:
        movers = self._live_movers()
        if need > self.max_size or not movers:
            raise OutOfArena(f"arena of {self.size} bytes exhausted ({need} needed, at most "
                             f"{self.max_size})")
        size = self.size
        while size < need:
            size *= 2
        size = min(size, self.max_size)
        new = _map(size)
        new[:self._top] = self.view[:self._top]
        view = memoryview(new)
        for rebind in movers:
            rebind(view)
        old = self.map
        self.view.release()
        self.map, self.view, self.size = new, view, size
        with contextlib.suppress(BufferError):   # a caller still holds a slice of the old view
            old.close()

    def free(self, off: int, size: int) -> None:
        size = (size + ALIGN - 1) & ~(ALIGN - 1)
        self._free.setdefault(size, []).append(off)

    @property
    def used(self) -> int:
        return self._top - sum(len(v) * k for k, v in self._free.items())
