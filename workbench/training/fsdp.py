"""Sharded data parallelism with FSDP2 (``torch.distributed.fsdp.fully_shard``).

``--fsdp`` under torchrun shards the student layer by layer: each decoder layer is one FSDP
group (all-gathered just before its forward and backward, freed after), and the root group
holds what is left (embeddings, final norm, lm_head), gathered for the length of one
micro-batch's forward and backward. Parameters, gradients (reduce-scattered) and AdamW state
live as 1/N shards (DTensors) on each rank. The root is the loop's ``ObjectiveModule``, so the
whole objective (which reaches into the decoder and the lm_head weight directly for the
chunked loss) runs inside one root forward, where the root parameters are whole.

A distillation teacher is sharded the same way, without optimizer state. In distillation the
input embeddings and lm_heads of both models are in no group at all: they stay split by
vocabulary rows and the lookup and the loss run on the shards (``shard_embeddings_apart``), so no
rank gathers a vocab-sized table.

Mixed precision is FSDP2's ``MixedPrecisionPolicy``: bf16 compute parameters with fp32
gradient reduction on a GPU that supports bf16 (``--precision auto``) or when asked
(``--precision bf16``); fp32 otherwise. The sharded master weights stay fp32.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.distributed.tensor import DTensor

from workbench.errors import CheckpointError, ConfigError
from workbench.training.distributed import Dist
from workbench.training.objectives import unwrap, supervised_hidden_states


def check_fsdp_launch(config, ctx: Dist) -> None:
    """--fsdp shards over the processes torchrun starts: refuse one process (nothing to shard
    over) rather than run something other than what was asked."""
    if config.fsdp and not ctx.enabled:
        raise ConfigError("--fsdp shards the model over torchrun's processes, and this is one process; "
                          "launch with torchrun --nproc_per_node=N (N >= 2), or drop --fsdp")


def device_mesh(ctx: Dist):
    """A 1-D mesh over every rank, of this process's device type (a CPU mesh is explicit, so a
    machine that has GPUs still shards on CPU when the run is on CPU)."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(ctx.device.type, (ctx.world_size,))


def mixed_precision(precision: str, device: torch.device):
    """FSDP2's policy for --precision: bf16 parameters for compute, fp32 gradient reduction."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    gpu_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and device.type == "cuda" and not gpu_bf16:
        raise ConfigError("precision bf16: this GPU does not support bfloat16; use fp32")
    if precision == "bf16" or (precision == "auto" and gpu_bf16):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (peft-wrapped or not): the decoder's ModuleList."""
    decoder = unwrap(model).get_decoder()
    for name in ("layers", "h", "blocks"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ConfigError(f"{unwrap(model).config.model_type}: no decoder layer list found to shard with --fsdp")


def empty_model(path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The checkpoint's model with its parameters on the 'meta' device (no memory) and its
    buffers (rotary frequencies) real: ``shard_model`` then gives each rank only its shards,
    read from the checkpoint tensor by tensor, so no rank ever holds the whole model."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from workbench.checkpoint import Checkpoint, parse_dtype
    from workbench.modeling import check_tensor_shapes, read_config

    ckpt = Checkpoint(path)
    check_tensor_shapes(ckpt)  # what load_model refuses, refused here too
    config = read_config(ckpt)
    stored = parse_dtype(ckpt.config.get("dtype") or ckpt.config.get("torch_dtype") or "float32")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or stored)
    model.tie_weights()  # from_pretrained ties a tied head to the embedding; from_config leaves it apart
    setattr(model, WEIGHTS_FROM, ckpt)
    return model.eval()


WEIGHTS_FROM = "_workbench_weights_from"


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
CPU_MMAP_THRESHOLD = 128 << 10


def return_freed_memory_on_cpu() -> bool:
    """Have glibc give blocks of 128 KiB and more their own mapping, returned to the system when
    freed. FSDP on a CPU gathers and frees whole layers, gradients and buffers at every step;
    with glibc's default (a threshold that rises to 32 MiB as large blocks are freed), those go
    to the heap and stay resident, and a rank's peak memory ends up near data parallelism's
    (scripts/bench_fsdp.py: 0.96x). At 1 MiB the activations of a short batch (a [4 x 100 x 576]
    fp32 tensor is 0.9 MB) still went to the heap, between blocks that stay, and a rank's
    resident memory grew by ~200 MB over the first six steps (SmolLM2 distillation, 8 steps); at
    128 KiB it stays flat after the first step and the peak is ~100 MB lower. A
    MALLOC_MMAP_THRESHOLD_ set by the user wins. False where this is not glibc."""
    import ctypes
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


def shard_model(root: torch.nn.Module, model: torch.nn.Module, ctx: Dist, precision: str,
                reshard_root: bool | None = None, vocab_sharded_head: bool = False) -> torch.nn.Module:
    """fully_shard every decoder layer of ``model``, then ``root`` (a module holding ``model``)
    for what is left. ``reshard_root`` None lets FSDP keep the root gathered from forward to
    backward (training); True frees it after each forward (an inference-only teacher).
    ``vocab_sharded_head``: the input embedding and the lm_head stay split by vocabulary rows,
    never gathered (``shard_embeddings_apart``), for a loss that computes logits from the
    head's shards (``workbench.distill.heads``).
    A model from ``empty_model`` gets its shards from its checkpoint here."""
    from torch.distributed.fsdp import fully_shard

    if ctx.device.type == "cpu":
        return_freed_memory_on_cpu()
    mesh = device_mesh(ctx)
    policy = mixed_precision(precision, ctx.device)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    apart = shard_embeddings_apart(model, mesh) if vocab_sharded_head else set()
    fully_shard(root, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_root, ignored_params=apart or None)
    if hasattr(model, WEIGHTS_FROM):
        load_shards(root, model, getattr(model, WEIGHTS_FROM), ctx)
    return root


def shard_embeddings_apart(model: torch.nn.Module, mesh) -> set[torch.nn.Parameter]:
    """Split the input embedding and the lm_head weight by vocabulary rows outside any FSDP
    group, so that no rank ever gathers them: the lookup runs on the shards
    (``ShardedEmbedding``) and so does the loss (``workbench.distill.heads``). A tied head keeps
    sharing the embedding's parameter. Returns the parameters for the root group to ignore."""
    from workbench.training.sharded_embedding import ShardedEmbedding, sharded_rows

    base = unwrap(model)
    embedding, head = base.get_input_embeddings(), base.get_output_embeddings()
    tied = head.weight is embedding.weight
    try:
        sharded = ShardedEmbedding.replacing(embedding, mesh)
    except ValueError as error:
        raise ConfigError(f"{base.config.model_type}: {error}") from None
    base.set_input_embeddings(sharded)
    head.weight = sharded.weight if tied else sharded_rows(head.weight, mesh)
    return {sharded.weight, head.weight}


@torch.no_grad()
def load_shards(root: torch.nn.Module, model: torch.nn.Module, ckpt, ctx: Dist) -> None:
    """Allocate this rank's shards of a meta-device model and fill them from the checkpoint,
    one whole tensor in memory at a time (each rank cuts its own rows: no communication)."""
    from torch.distributed.tensor import distribute_tensor

    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    root.to_empty(device=ctx.device)  # FSDP re-creates the sharded parameters on the device
    for name, buffer in model.named_buffers():
        buffer.copy_(buffers[name])
    stored = set(ckpt.names())
    unused = sorted(stored - set(model.state_dict()))
    if unused:
        raise CheckpointError(f"{ckpt.path}: tensor '{unused[0]}' is not part of {type(model).__name__}, so it "
                          "would be dropped; remove it or fix config.json's architecture")
    for name, param in model.named_parameters():  # tied weights appear once, under the embedding's name
        if name not in stored:
            raise CheckpointError(f"{ckpt.path}: {type(model).__name__} needs tensor '{name}', which the checkpoint "
                              "lacks, so it would be left random")
        whole = read_unmapped(ckpt, name).to(param.dtype)
        param.copy_(distribute_tensor(whole, param.device_mesh, param.placements, src_data_rank=None))
    delattr(model, WEIGHTS_FROM)


class ShardedTeacher(torch.nn.Module):
    """A frozen teacher sharded over the ranks. Inside ``gathered(batch)`` it gives the final
    hidden states at the supervised positions (whole) and its lm_head weight as the DTensor of
    this rank's vocabulary rows, which the distillation loss uses where it lies. The decoder
    layers and the input embedding are gathered one at a time during the forward only."""

    def __init__(self, teacher: torch.nn.Module, ctx: Dist, precision: str):
        super().__init__()
        self.model = teacher.eval().requires_grad_(False)
        shard_model(self, self.model, ctx, precision, vocab_sharded_head=True)

    def forward(self, batch: dict) -> torch.Tensor:
        hidden, _ = supervised_hidden_states(self.model, batch)
        return hidden

    @contextmanager
    def gathered(self, batch: dict):
        try:
            with torch.no_grad():
                hidden = self(batch)
            yield hidden, unwrap(self.model).get_output_embeddings().weight
        finally:
            self.reshard()


def read_unmapped(ckpt, name: str) -> torch.Tensor:
    """One tensor from its own short-lived memory map: a handle kept open would leave every
    tensor read so far mapped, and resident, until the end."""
    from safetensors import safe_open

    with safe_open(str(ckpt.info(name).file), framework="pt") as handle:
        return handle.get_tensor(name)


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def local_numel(model: torch.nn.Module) -> int:
    """Parameter elements resident on this rank (its shards only, for a sharded model)."""
    return sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (collective for a DTensor: every rank must ask for the same ones)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
