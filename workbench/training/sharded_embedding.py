"""An input embedding whose table stays split by vocabulary rows over the ranks (under --fsdp,
for the distillation losses that read the lm_head the same way: ``workbench.distill.heads``).

FSDP would gather the whole [vocab, hidden] table for the lookup and again for its backward,
and reduce-scatter a whole-table gradient: three vocab-sized transfers per micro-batch (113 MB
each for SmolLM2 in fp32), and at the end of backward the largest tensors a rank holds. Here
each rank looks up, for every rank's tokens, the ids its own rows hold, and a reduce-scatter of
those [tokens x hidden] partial embeddings gives each rank its tokens' embeddings; in backward
the tokens' gradients are gathered and each rank adds them into its own rows. The table is a
DTensor sharded on dim 0 (the rows FSDP2 would give each rank) that no FSDP group manages: its
gradient is complete where it is computed, divided by the number of ranks as FSDP's averaging
reduce-scatter would (every rank's loss carries the same scale).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard, distribute_tensor


class ShardedEmbedding(torch.nn.Module):
    """Stands in for an ``nn.Embedding`` whose weight is a dim-0 sharded DTensor parameter."""

    def __init__(self, weight: torch.nn.Parameter, padding_idx: int | None):
        super().__init__()
        self.weight = weight
        self.padding_idx = padding_idx

    @classmethod
    def replacing(cls, embedding: torch.nn.Embedding, mesh) -> ShardedEmbedding:
        if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
            raise ValueError("a sharded input embedding supports neither max_norm, scale_grad_by_freq nor sparse")
        return cls(sharded_rows(embedding.weight, mesh), embedding.padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        return _ShardedLookup.apply(ids, weight.to_local(), weight.shape[0], weight.device_mesh.get_group(),
                                    self.padding_idx)


def sharded_rows(weight: torch.nn.Parameter, mesh) -> torch.nn.Parameter:
    """``weight`` as a parameter of dim-0 DTensor shards, this rank's rows only (on the meta
    device if ``weight`` is: the shards are filled later from the checkpoint)."""
    if weight.is_meta:
        pieces = torch.empty_like(weight).chunk(mesh.size())
        rank = mesh.get_local_rank()
        local = pieces[rank] if rank < len(pieces) else weight.new_empty(0, *weight.shape[1:])
        sharded = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=weight.shape,
                                     stride=weight.stride())
    else:
        sharded = distribute_tensor(weight.detach(), mesh, [Shard(0)], src_data_rank=None)
    return torch.nn.Parameter(sharded, requires_grad=weight.requires_grad)


class _ShardedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, rows, vocab, group, padding_idx):
        ranks, rank = dist.get_world_size(group), dist.get_rank(group)
        first = rank * -(-vocab // ranks)
        sizes = torch.zeros(ranks, dtype=torch.int64, device=ids.device)
        dist.all_gather_into_tensor(sizes, torch.tensor([ids.numel()], device=ids.device), group=group)
        most = int(sizes.max())
        everyone = ids.new_empty(ranks * most)
        dist.all_gather_into_tensor(everyone, torch.nn.functional.pad(ids.flatten(), (0, most - ids.numel())),
                                    group=group)
        positions = (torch.arange(ranks * most, device=ids.device) % most) < sizes.repeat_interleave(most)
        mine = positions & (everyone >= first) & (everyone < first + rows.shape[0])
        where, local_ids = mine.nonzero().squeeze(1), everyone[mine] - first
        partial = rows.new_zeros(ranks * most, rows.shape[1])
        partial[where] = rows[local_ids]
        own = rows.new_empty(most, rows.shape[1])
        dist.reduce_scatter_tensor(own, partial, group=group)
        if padding_idx is not None:
            keep = everyone[where] != padding_idx
            where, local_ids = where[keep], local_ids[keep]
        ctx.save_for_backward(where, local_ids)
        ctx.group, ctx.ranks, ctx.most, ctx.rows_shape, ctx.rows_dtype = group, ranks, most, rows.shape, rows.dtype
        return own[: ids.numel()].view(*ids.shape, rows.shape[1])

    @staticmethod
    def backward(ctx, grad_output):
        where, local_ids = ctx.saved_tensors
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        everyone = grad.new_empty(ctx.ranks * ctx.most, grad.shape[1])
        dist.all_gather_into_tensor(everyone, torch.nn.functional.pad(grad, (0, 0, 0, ctx.most - len(grad))),
                                    group=ctx.group)
        grad_rows = grad.new_zeros(ctx.rows_shape, dtype=ctx.rows_dtype)
        grad_rows.index_add_(0, local_ids, everyone[where].to(ctx.rows_dtype))
        return None, grad_rows.div_(ctx.ranks), None, None, None
