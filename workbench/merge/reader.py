"""Zero-copy tensor views onto memory-mapped safetensors shards, with page release.

A merge touches every byte of every input once or a few times. Reading through a private
memory map avoids copying each tensor into fresh memory, and ``release`` tells the kernel
(``madvise(MADV_DONTNEED)``) that a range's pages are no longer needed, so resident memory
holds a few chunks of each input rather than whole tensors. The map is copy-on-write
(``ACCESS_COPY``) only so torch accepts it as a writable buffer; nothing writes to it.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import torch

from workbench.checkpoint import Checkpoint

PAGE = mmap.PAGESIZE


class MappedCheckpoint:
    """Tensors of a ``Checkpoint`` as flat views onto its memory-mapped shards."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self._maps: dict[Path, mmap.mmap] = {}

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._maps[path]

    def flat(self, name: str) -> torch.Tensor:
        """The tensor's elements as a 1-D view onto the file (no copy)."""
        info = self.checkpoint.info(name)
        dtype = info.torch_dtype
        count = info.numel
        if count == 0:
            return torch.empty(0, dtype=dtype)
        if info.start % dtype.itemsize:
            return self.checkpoint.read(name).reshape(-1)
        return torch.frombuffer(self._map(info.file), dtype=dtype, count=count, offset=info.start)

    def releaser(self, name: str):
        """A function (start, stop) that drops the pages holding elements [start, stop)."""
        info = self.checkpoint.info(name)
        if info.numel == 0 or info.start % info.torch_dtype.itemsize:
            return lambda start, stop: None
        mapped = self._map(info.file)
        itemsize = info.torch_dtype.itemsize

        def release(start: int, stop: int) -> None:
            begin = (info.start + start * itemsize) // PAGE * PAGE
            end = min(len(mapped), -(-(info.start + stop * itemsize) // PAGE) * PAGE)
            if end > begin:
                mapped.madvise(mmap.MADV_DONTNEED, begin, end - begin)

        return release

    def close(self) -> None:
        for mapped in self._maps.values():
            try:
                mapped.close()
            except BufferError:  # a view is still alive somewhere; the GC unmaps it later
                pass
        self._maps.clear()

