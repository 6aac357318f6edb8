"""LoRA through peft: wrap a model, check the target modules exist, save and merge."""

from __future__ import annotations

import warnings

import torch

from workbench.errors import ConfigError, did_you_mean


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Short names of the layers LoRA can target (linear and GPT-2's Conv1D), without the head."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head}
    return sorted(names)


def apply_lora(model: torch.nn.Module, rank: int, alpha: float, dropout: float, targets: list[str] | str):
    """A peft model with fresh adapters on ``targets`` (only the adapters train)."""
    from peft import LoraConfig, get_peft_model

    if targets != "all-linear":
        available = linear_module_names(model)
        if not targets:
            raise ConfigError(f"lora_targets is empty; available: all-linear, {', '.join(available)}")
        for target in targets:
            if target not in available:
                raise ConfigError(f"lora_targets: {model.config.model_type} has no linear module "
                                  f"'{target}'{did_you_mean(target, available)}; available: "
                                  f"all-linear, {', '.join(available)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        task_type="CAUSAL_LM", fan_in_fan_out=model.config.model_type == "gpt2")
    with warnings.catch_warnings():
        # peft asks transformers 5 a deprecated question; the user can do nothing about it.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def unsharded_lora_copy(model, base, config, ctx):
    """After LoRA training under FSDP: every rank joins the gather of the adapter weights (small);
    rank 0 returns a plain peft model, the base read again from its checkpoint with the trained
    adapter in it, to merge and write; the other ranks return None."""
    from workbench.modeling import load_model
    from workbench.training.fsdp import full_tensor

    adapter = {name: full_tensor(param).detach().cpu() for name, param in model.named_parameters()
               if param.requires_grad}
    if not ctx.is_main:
        return None
    plain = apply_lora(load_model(base.path, dtype=torch.float32), config.lora_rank, config.lora_alpha,
                       config.lora_dropout, config.target_modules)
    params = dict(plain.named_parameters())
    with torch.no_grad():
        for name, value in adapter.items():
            params[name].copy_(value)
    return plain
