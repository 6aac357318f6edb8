"""The served models: loaded on first use, unloaded when idle or when memory is short.

At most ``max_loaded`` models are in memory. Before a model is loaded, idle models are
unloaded (least recently used first) until it fits under that count and under the
memory the system reports available; a model that has requests in flight is never
unloaded. A background sweep unloads models idle for ``idle_seconds``.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass

from workbench.checkpoint import Checkpoint
from workbench.serve.batcher import Batcher

# Room for activations and KV caches beyond the weights, as a fraction of the weights.
LOAD_HEADROOM = 0.25


class PoolFull(Exception):
    """No model can be unloaded to make room: every loaded model is busy."""


@dataclass
class Loaded:
    batcher: Batcher
    tokenizer: object
    max_positions: int | None


class ModelPool:
    def __init__(self, checkpoints: dict[str, Checkpoint], *, max_rows: int = 16, max_loaded: int = 4,
                 idle_seconds: float = 300.0, available_memory=None):
        self.checkpoints = checkpoints
        self.max_rows = max_rows
        self.max_loaded = max_loaded
        self.idle_seconds = idle_seconds
        self.available_memory = available_memory or system_available_memory
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()  # one load or unload at a time
        self._closed = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="model-sweeper", daemon=True)
        self._sweeper.start()

    @property
    def loaded_names(self) -> list[str]:
        return list(self._loaded)

    def get(self, name: str) -> Loaded:
        """The model, loading it (and unloading others to make room) when needed; blocking."""
        loaded = self._loaded.get(name)
        if loaded is not None:
            loaded.batcher.last_used = time.monotonic()
            return loaded
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            self._make_room(self.checkpoints[name])
            self._loaded[name] = self._load(name)
            return self._loaded[name]

    def _make_room(self, ckpt: Checkpoint) -> None:
        needed = ckpt.total_bytes * (1 + LOAD_HEADROOM)
        while self._loaded and (len(self._loaded) >= self.max_loaded or self._short_of(needed)):
            idle = [(entry.batcher.last_used, name) for name, entry in self._loaded.items()
                    if not entry.batcher.busy]
            if not idle:
                raise PoolFull(f"all {len(self._loaded)} loaded models are answering requests and there is "
                               f"no room for another ({', '.join(self._loaded)}); retry shortly")
            self._unload(min(idle)[1])

    def _short_of(self, needed: float) -> bool:
        available = self.available_memory()
        return available is not None and available < needed

    def _load(self, name: str) -> Loaded:
        from workbench.modeling import load_model, load_tokenizer

        ckpt = self.checkpoints[name]
        model = load_model(ckpt.path)
        tokenizer = load_tokenizer(ckpt.path)
        max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        return Loaded(Batcher(model, tokenizer, max_rows=self.max_rows, name=name), tokenizer, max_positions)

    def _unload(self, name: str) -> None:
        entry = self._loaded.pop(name)
        entry.batcher.stop()
        del entry
        gc.collect()

    def _sweep(self) -> None:
        while not self._closed.wait(min(self.idle_seconds / 4, 5.0)):
            now = time.monotonic()
            with self._lock:
                for name, entry in list(self._loaded.items()):
                    if not entry.batcher.busy and now - entry.batcher.last_used > self.idle_seconds:
                        self._unload(name)

    def close(self) -> None:
        """Cancel what is running and unload everything."""
        self._closed.set()
        with self._lock:
            for name in list(self._loaded):
                self._unload(name)


def system_available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
