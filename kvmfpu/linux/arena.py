"""Kernel memory for fpstate buffers and guest memory.

One anonymous mapping serves as the emulated core's memory, so the kernel's XSAVES and
XRSTORS run on fpstate buffers at their own addresses (which XSAVEOPT/XSAVES' modified
optimisation depends on). Pages cost nothing until touched.
"""

from __future__ import annotations

import mmap

DEFAULT_SIZE = 4 << 30
ALIGN = 64


class OutOfArena(MemoryError):
    pass


class Arena:
    def __init__(self, size: int = DEFAULT_SIZE):
        self.size = size
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.map)
        self._top = 4096            # address 0 stays unused, like NULL
        self._free: dict[int, list[int]] = {}

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
            raise OutOfArena(f"arena of {self.size} bytes exhausted")
        self._top = off + size
        return off

    def free(self, off: int, size: int) -> None:
        size = (size + ALIGN - 1) & ~(ALIGN - 1)
        self._free.setdefault(size, []).append(off)

    @property
    def used(self) -> int:
        return self._top - sum(len(v) * k for k, v in self._free.items())
