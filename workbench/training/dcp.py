"""Sharded training checkpoints through ``torch.distributed.checkpoint`` (DCP), for FSDP runs.

Every rank writes its own shards of the model and of the AdamW state into one directory (on a
filesystem every rank sees), and reads back exactly its shards on resume: with the same world
size the restored shards are bitwise the saved ones. The rest of a training checkpoint (loop
counters, scheduler, each rank's RNG) is written by ``workbench.training.state`` as for the
data-parallel path, and the whole step directory still appears only once complete.
"""

from __future__ import annotations

from pathlib import Path

import torch

SHARDED_DIR = "sharded"


def save_sharded(checkpoint_dir: Path, model: torch.nn.Module, optimizer) -> None:
    """Collective: every rank writes its shards of model and optimizer to CHECKPOINT/sharded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state},
             checkpoint_id=str(checkpoint_dir / SHARDED_DIR))


def load_sharded(checkpoint_dir: Path, model: torch.nn.Module, optimizer) -> None:
    """Collective: restore this rank's shards of model and optimizer in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    both = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(both, checkpoint_id=str(checkpoint_dir / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=both["model"], optim_state_dict=both["optimizer"])
