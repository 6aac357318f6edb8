"""How the chunked losses turn final hidden states into logits and logit gradients back into
hidden-state and lm_head-weight gradients: with the whole weight on this process
(``WholeHead``), or with the weight split by vocabulary rows over the ranks (``ShardedHead``).

Under --fsdp the lm_head weight [vocab, hidden] is an FSDP2 DTensor sharded on dim 0, so each
rank already holds a contiguous slice of the vocabulary. Gathering it for the loss would put
three vocab-sized tensors on every rank at once (the student's head, the teacher's head and
the student head's whole gradient, 113 MB each for SmolLM2 in fp32), which is where a
distillation rank's memory peaks. ``ShardedHead`` keeps the slices where they are: per chunk
of tokens every rank multiplies all ranks' hidden states by its own rows, and an all-to-all
hands each rank the full-vocab logits of its own tokens; the logits' gradient travels back the
same way, so each rank forms the gradient of its own rows from every rank's tokens and the
hidden states' gradients are summed back to their owners by a reduce-scatter. Every rank must
run the same chunks in the same order: ``chunks`` agrees on the number and size of chunks
(ranks with fewer tokens run padded, empty ones).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


class VocabShards(NamedTuple):
    """How an lm_head weight is split: its whole vocab size and the ranks holding its rows."""

    vocab: int
    group: object


def local_weight(weight: torch.Tensor) -> tuple[torch.Tensor, VocabShards | None]:
    """The part of ``weight`` this process holds (differentiable: gradients reach an FSDP2
    DTensor through it) and how the weight is split (None: whole here)."""
    if isinstance(weight, DTensor):
        return weight.to_local(), VocabShards(weight.shape[0], weight.device_mesh.get_group())
    return weight, None


def make_head(weight: torch.Tensor, shards: VocabShards | None, keep: int | None = None):
    """The head over ``weight`` (``local_weight``'s pair) whose logits cover the first ``keep``
    ids of the vocab (default: all)."""
    if shards is None:
        return WholeHead(weight[:keep])
    return ShardedHead(weight, shards.vocab, shards.group, keep)


class WholeHead:
    """The whole lm_head weight [vocab, hidden] on this process."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.float()
        self.vocab = weight.shape[0]

    def chunks(self, tokens: int, size: int):
        """(start, end, padded) of each chunk of ``tokens`` rows: padded is end - start here."""
        return ((start, min(start + size, tokens), min(size, tokens - start)) for start in range(0, tokens, size))

    def logits(self, hidden: torch.Tensor, padded: int) -> torch.Tensor:
        return hidden @ self.weight.T

    def backward(self, dlogits: torch.Tensor, hidden: torch.Tensor, grad_weight: torch.Tensor | None) -> torch.Tensor:
        """d(loss)/d(hidden) of the chunk; d(loss)/d(weight) added to ``grad_weight`` when given."""
        if grad_weight is not None:
            grad_weight.addmm_(dlogits.T, hidden)
        return dlogits @ self.weight

    def weight_grad(self, grad_weight: torch.Tensor) -> torch.Tensor:
        return grad_weight


class ShardedHead:
    """This rank's rows of an lm_head weight split by vocabulary over a process group (FSDP2's
    dim-0 shards: rank r holds rows [r * R, (r + 1) * R), R = ceil(vocab / ranks), the last
    ranks fewer or none). Logits and their gradients are exchanged per chunk, never the weight."""

    def __init__(self, rows: torch.Tensor, vocab: int, group, keep: int | None = None):
        self.group = group
        self.ranks = dist.get_world_size(group)
        self.vocab = min(vocab, keep or vocab)  # the logits' columns
        self.per_rank = -(-vocab // self.ranks)
        self.local_rows = rows.shape[0]
        self.weight = torch.nn.functional.pad(rows.float(), (0, 0, 0, self.per_rank - self.local_rows))
        self._gathered_hidden = None

    def chunks(self, tokens: int, size: int):
        """The chunks every rank runs: as many as the rank with the most tokens needs, each
        ``padded`` rows long on every rank; this rank's own rows are [start, end)."""
        most = torch.tensor([tokens], dtype=torch.int64, device=self.weight.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX, group=self.group)
        most = int(most)
        return ((start, max(start, min(start + size, tokens)), min(size, most - start))
                for start in range(0, most, size))

    def logits(self, hidden: torch.Tensor, padded: int) -> torch.Tensor:
        """Full-vocab logits [len(hidden), vocab] of this rank's chunk."""
        everyone = hidden.new_empty(self.ranks * padded, hidden.shape[1])
        dist.all_gather_into_tensor(everyone, _pad_rows(hidden, padded), group=self.group)
        self._gathered_hidden = everyone
        mine = torch.empty(self.ranks * padded, self.per_rank, dtype=hidden.dtype, device=hidden.device)
        dist.all_to_all_single(mine, everyone @ self.weight.T, group=self.group)
        # block s of `mine` holds rank s's vocabulary rows for this rank's tokens
        whole = mine.view(self.ranks, padded, self.per_rank).transpose(0, 1).reshape(padded, -1)
        del mine
        return whole[: len(hidden), : self.vocab]

    def backward(self, dlogits: torch.Tensor, hidden: torch.Tensor, grad_weight: torch.Tensor | None) -> torch.Tensor:
        """As ``WholeHead.backward``, for the chunk whose ``logits`` came last; ``grad_weight``
        holds this rank's rows, summed over every rank's tokens."""
        padded = len(self._gathered_hidden) // self.ranks
        outgoing = dlogits.new_zeros(self.ranks, padded, self.per_rank)  # block r: rank r's vocabulary rows
        for rank, columns in enumerate(dlogits.split(self.per_rank, dim=1)):
            outgoing[rank, : len(dlogits), : columns.shape[1]] = columns
        mine = torch.empty_like(outgoing).view(self.ranks * padded, self.per_rank)
        dist.all_to_all_single(mine, outgoing.view(self.ranks * padded, self.per_rank), group=self.group)
        del outgoing
        if grad_weight is not None:
            grad_weight.addmm_(mine.T, self._gathered_hidden)
        own = hidden.new_empty(padded, hidden.shape[1])
        dist.reduce_scatter_tensor(own, mine @ self.weight, group=self.group)
        self._gathered_hidden = None
        return own[: len(hidden)]

    def weight_grad(self, grad_weight: torch.Tensor) -> torch.Tensor:
        """This rank's rows of the gradient, unpadded, divided by the number of ranks: FSDP
        averages the other gradients over the ranks (the loss of each rank is scaled by the same
        factor, its share of the global batch), and these rows already sum every rank's tokens."""
        return grad_weight[: self.local_rows] / self.ranks


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    return tensor if len(tensor) == rows else torch.nn.functional.pad(tensor, (0, 0, 0, rows - len(tensor)))
