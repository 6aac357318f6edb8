"""Run by torchrun from tests/test_fsdp.py: shard a teacher over the ranks as `distill --fsdp`
does, run one batch through it, and write what this rank holds and computed to OUT/rank-R.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from workbench.data import TokenizedExample, pad_collate
from workbench.modeling import load_model
from workbench.training.distributed import setup
from workbench.training.fsdp import ShardedTeacher, empty_model, local_numel
from workbench.training.objectives import supervised_hidden_states


def main(teacher_dir: str, out: str) -> None:
    ctx = setup()
    whole = load_model(teacher_dir)
    generator = torch.Generator().manual_seed(ctx.rank)
    rows = []
    for length in (9, 12):
        ids = torch.randint(1, whole.config.vocab_size, (length,), generator=generator).tolist()
        rows.append(TokenizedExample(ids, [-100] * 5 + ids[5:]))
    batch = pad_collate(rows, pad_id=0)

    sharded = ShardedTeacher(empty_model(teacher_dir), ctx, "fp32")  # as `distill --fsdp` loads it
    resident_before = local_numel(sharded)
    with sharded.gathered(batch) as (hidden, weight):
        resident_gathered = local_numel(sharded)
        weight = weight.detach().clone()
    resident_after = local_numel(sharded)
    with torch.no_grad():
        expected_hidden, _ = supervised_hidden_states(whole, batch)
    report = {
        "total": sum(p.numel() for p in whole.parameters()),
        "resident_before": resident_before, "resident_gathered": resident_gathered,
        "resident_after": resident_after,
        "hidden_max_diff": (hidden - expected_hidden).abs().max().item(),
        "weight_rows_equal": torch.equal(weight.to_local(), whole_rows(whole.get_output_embeddings().weight, ctx)),
        "hidden_size": whole.config.hidden_size,
        "tied": whole.get_output_embeddings().weight is whole.get_input_embeddings().weight,
        "head_is_embedding": (sharded.model.get_output_embeddings().weight
                              is sharded.model.get_input_embeddings().weight),
    }
    Path(out, f"rank-{ctx.rank}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()


def whole_rows(weight: torch.Tensor, ctx) -> torch.Tensor:
    """This rank's dim-0 shard of a whole tensor, as FSDP2 cuts it."""
    per_rank = -(-weight.shape[0] // ctx.world_size)
    return weight[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]


if __name__ == "__main__":
    main(*sys.argv[1:])
