"""LoRA adapter inputs (mergekit's ``model+lora`` form): merged into their base with peft
before the merge proper, written as an ordinary temporary checkpoint."""

from __future__ import annotations

from pathlib import Path

from workbench.checkpoint import Checkpoint, make_lineage, save_model
from workbench.merge.config import ModelRef


def merge_adapter(ref: ModelRef, out_dir: Path) -> Checkpoint:
    """Base + adapter -> one checkpoint in the base's dtype (holds one model in memory)."""
    from peft import PeftModel

    from workbench.modeling import load_model

    model = load_model(ref.path)
    model = PeftModel.from_pretrained(model, str(ref.lora), is_trainable=False).merge_and_unload()
    lineage = make_lineage("lora-merge", {"adapter": str(ref.lora)}, inputs={"base": Checkpoint(ref.path)})
    return save_model(model, out_dir, lineage=lineage, support_from=ref.path)
