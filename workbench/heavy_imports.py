"""Importing torch makes a few hundred thousand Python objects, and the cyclic garbage
collector walks all of them again and again while it does (about a tenth of the import's
time, which a short command such as ``workbench merge`` pays in full). Commands import their
engine inside ``paused_collector()``: no collections during the import, and what it made is
frozen afterwards (module-level objects, never garbage), so later collections skip it."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused_collector() -> Iterator[None]:
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
