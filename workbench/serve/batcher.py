"""Continuous batching for one loaded model: concurrent requests share each forward pass.

One thread per model runs the decode loop. Each turn it admits waiting requests (one
left-padded prefill for all of them), merges their KV caches into the running batch, runs
one decode step for every running row, and retires the rows that finished (end-of-sequence
token, a stop string, ``max_new_tokens``, or a cancelled client). A request that arrives
mid-generation joins at the next step instead of waiting for the batch to drain.

Rows of different lengths are left-padded: padded cache slots are masked out and position
ids count real tokens only, so a row's positions are what they would be alone. A request
alone in the batch runs exactly the forwards ``model.generate`` runs (same prefill with
``logits_to_keep=1``, one token per step), so greedy answers match ``workbench generate``.

Models whose cache has layers other than plain ``DynamicLayer`` (sliding-window and
hybrid caches) cannot have caches merged: there new requests wait until the running batch
has finished, and then start together.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from workbench.modeling import pad_token_id, stop_token_ids
from workbench.serve.sampling import Sampling, find_stop, next_token, releasable


class BatcherStopped(Exception):
    """The model was unloaded between looking it up and submitting to it: look it up again."""


@dataclass
class Answer:
    """How a request ended: its full text, why it stopped and what it cost in tokens."""

    text: str
    finish_reason: str  # stop | length | cancelled | error
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


@dataclass
class GenerationRequest:
    """One prompt to answer. ``on_text(delta)`` gets text as it becomes final and
    ``on_done(answer)`` is called exactly once; both run on the batcher's thread."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    on_text: Callable[[str], None]
    on_done: Callable[[Answer], None]
    stops: tuple[str, ...] = ()
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Row:
    request: GenerationRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    sent: str = ""


class _Batch:
    """The rows decoding together: their cache, 2-D attention mask [rows, cache length],
    next position id and last token."""

    def __init__(self, rows, cache, mask, positions, last):
        self.rows: list[_Row] = rows
        self.cache = cache
        self.mask: torch.Tensor = mask
        self.positions: torch.Tensor = positions
        self.last: torch.Tensor = last

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long)
        self.rows = [self.rows[i] for i in keep]
        self.cache.batch_select_indices(index)
        self.mask, self.positions, self.last = self.mask[index], self.positions[index], self.last[index]
        self._trim_left()

    def _trim_left(self) -> None:
        """Drop leading cache columns that every remaining row has masked out."""
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        if start:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    def merge(self, other: "_Batch") -> None:
        """Append ``other``'s rows, left-padding whichever cache is shorter."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)])
            mine.values = torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)])
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(other.mask, length, 1)])
        self.rows += other.rows
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _mergeable(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


class Batcher:
    """Answers requests for one model on a background thread, up to ``max_rows`` at once."""

    _ids = itertools.count()

    def __init__(self, model, tokenizer, max_rows: int = 16, name: str = "model"):
        self.model = model
        self.tokenizer = tokenizer
        self.max_rows = max_rows
        self.eos_ids = stop_token_ids(model, tokenizer)
        if not self.eos_ids:
            raise ValueError("the model has no end-of-sequence token in its generation config or tokenizer")
        self.pad_id = pad_token_id(tokenizer)
        self.cache_arg = _cache_argument(model)
        self._waiting: list[GenerationRequest] = []
        self._batch: _Batch | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self.last_used = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}-{next(self._ids)}",
                                         daemon=True)
        self._thread.start()

    # --- what callers use ------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> None:
        """Queue ``request``; raises ``BatcherStopped`` once the model was unloaded."""
        with self._wake:
            if self._stopping:
                raise BatcherStopped()
            self._waiting.append(request)
            self.last_used = time.monotonic()
            self._wake.notify()

    @property
    def busy(self) -> bool:
        return bool(self._waiting) or self._batch is not None

    def stop(self, timeout: float | None = None) -> None:
        """Cancel what is left and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and self._batch is None:
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    if self._batch is not None:
                        self._step()
            except Exception as exc:  # a bug or out of memory: fail these requests, keep serving
                self._fail_all(f"{type(exc).__name__}: {exc}")
            self.last_used = time.monotonic()
        self._fail_all("server shutting down", reason="cancelled")

    def _admit(self) -> list[GenerationRequest]:
        running = len(self._batch.rows) if self._batch else 0
        if self._batch is not None and not _mergeable(self._batch.cache):
            return []
        room = self.max_rows - running
        admitted, self._waiting = self._waiting[:room], self._waiting[room:]
        return [r for r in admitted if not self._finish_if_cancelled(r)]

    def _finish_if_cancelled(self, request: GenerationRequest) -> bool:
        if request.cancelled.is_set():
            request.on_done(Answer("", "cancelled", len(request.prompt_ids), 0))
            return True
        return False

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        from transformers import DynamicCache

        length = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), length), dtype=torch.long)
        for i, request in enumerate(requests):
            ids[i, length - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[i, length - len(request.prompt_ids):] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                            position_ids=positions.to(self.model.device), use_cache=True,
                            logits_to_keep=1, **{self.cache_arg: cache}).logits[:, -1].cpu()
        rows = [_Row(r, r.sampling.generator()) for r in requests]
        batch = _Batch(rows, cache, mask, positions[:, -1] + 1, torch.zeros(len(rows), dtype=torch.long))
        self._advance(batch, logits)
        if self._batch is None:
            self._batch = batch
        elif batch.rows:
            self._batch.merge(batch)

    def _step(self) -> None:
        batch = self._batch
        device = self.model.device
        mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long)], dim=1)
        logits = self.model(input_ids=batch.last[:, None].to(device), attention_mask=mask.to(device),
                            position_ids=batch.positions[:, None].to(device), use_cache=True,
                            **{self.cache_arg: batch.cache}).logits[:, -1].cpu()
        batch.mask = mask
        batch.positions = batch.positions + 1
        self._advance(batch, logits)
        if not batch.rows:
            self._batch = None

    def _advance(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Sample each row's next token, send its new text, retire the rows that are done."""
        keep = []
        for i, row in enumerate(batch.rows):
            request = row.request
            if request.cancelled.is_set():
                self._finish(row, row.sent, "cancelled")
                continue
            token = next_token(logits[i], request.sampling, row.generator)
            row.tokens.append(token)
            batch.last[i] = token
            if token in self.eos_ids:
                self._finish(row, self._text(row.tokens[:-1]), "stop")
                continue
            text = self._text(row.tokens)
            cut = find_stop(text, request.stops) if request.stops else None
            if cut is not None:
                self._finish(row, text[:cut], "stop")
            elif len(row.tokens) >= request.max_new_tokens:
                self._finish(row, text, "length")
            else:
                self._send(row, releasable(text, request.stops))
                keep.append(i)
        if len(keep) < len(batch.rows):
            batch.select(keep)

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _send(self, row: _Row, text: str) -> None:
        if len(text) > len(row.sent) and text.startswith(row.sent):
            row.request.on_text(text[len(row.sent):])
            row.sent = text

    def _finish(self, row: _Row, text: str, reason: str) -> None:
        if reason != "cancelled":
            self._send(row, text)
        request = row.request
        request.on_done(Answer(text, reason, len(request.prompt_ids), len(row.tokens)))

    def _fail_all(self, message: str, reason: str = "error") -> None:
        with self._wake:
            waiting, self._waiting = self._waiting, []
        rows = self._batch.rows if self._batch else []
        self._batch = None
        for row in rows:
            row.request.on_done(Answer(row.sent, reason, len(row.request.prompt_ids), len(row.tokens),
                                       error=message))
        for request in waiting:
            request.on_done(Answer("", reason, len(request.prompt_ids), 0, error=message))


def _cache_argument(model) -> str:
    """The name ``forward`` takes the KV cache under: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (and still accepted, with a deprecation warning)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
