"""A teacher that fits no single device, for `distill cache-teacher --device-map`.

accelerate's big-model placement (through transformers' ``device_map``) puts the teacher's
layers on the GPUs in order, then in CPU memory, then on disk (read back layer by layer during
the forward), and moves the activations along. ``--device-map auto`` uses every visible device;
a list such as ``cuda:0,cuda:1`` or ``cpu,disk`` only those. ``--max-memory`` caps what each
device takes (``cuda:0=20GiB,cpu=8GiB``).
"""

from __future__ import annotations

import re

import torch

from workbench.checkpoint import Checkpoint
from workbench.errors import ConfigError

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def visible_devices() -> list[str]:
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return gpus + ["cpu", "disk"]


def parse_devices(device_map: str) -> list[str]:
    """The devices to spread over: every visible one for 'auto', else the listed ones, which
    must exist ('cuda' alone means cuda:0)."""
    available = visible_devices()
    if device_map.strip() == "auto":
        return available
    devices = []
    for name in (part.strip() for part in device_map.split(",")):
        name = "cuda:0" if name == "cuda" else name
        if name not in available:
            raise ConfigError(f"--device-map: no device '{name}' here; available: auto, {', '.join(available)}")
        devices.append(name)
    if not devices:
        raise ConfigError(f"--device-map is empty; available: auto, {', '.join(available)}")
    return devices


def parse_max_memory(text: str | None, devices: list[str]) -> dict[str, int]:
    """'cuda:0=20GiB,cpu=8GiB' -> {'cuda:0': bytes, 'cpu': bytes}, for listed devices only."""
    limits = {}
    for part in (p.strip() for p in (text or "").split(",") if p.strip()):
        device, _, size = part.partition("=")
        device = device.strip()
        match = SIZE.match(size)
        if device not in devices or device == "disk":
            raise ConfigError(f"--max-memory: '{device}' is not a memory device of --device-map "
                              f"({', '.join(d for d in devices if d != 'disk')})")
        if not match:
            raise ConfigError(f"--max-memory: '{part}' is not DEVICE=SIZE (e.g. cpu=8GiB)")
        limits[device] = int(float(match.group(1)) * UNITS[(match.group(2) or "B").lower()])
    return limits


def placement_kwargs(devices: list[str], max_memory: dict[str, int], offload_dir: str) -> dict:
    """from_pretrained arguments: device_map 'auto' limited to these devices."""
    from accelerate.utils import get_max_memory

    budget = get_max_memory()  # everything each visible device has free
    limits = {}
    for key, free in budget.items():
        name = f"cuda:{key}" if isinstance(key, int) else key
        if name in devices:
            limits[key] = max_memory.get(name, free)
        elif name == "cpu" or isinstance(key, int):
            limits[key] = 0
    kwargs = {"device_map": "auto", "max_memory": limits}
    if "disk" in devices:
        kwargs["offload_folder"] = offload_dir
    return kwargs


def load_placed_model(path, dtype: torch.dtype | None, device_map: str, max_memory: str | None,
                      offload_dir: str):
    """The checkpoint's model spread over the chosen devices (eval mode)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from workbench.modeling import check_tensor_shapes

    devices = parse_devices(device_map)
    kwargs = placement_kwargs(devices, parse_max_memory(max_memory, devices), offload_dir)
    ckpt = Checkpoint(path)
    check_tensor_shapes(ckpt)  # what load_model refuses, refused here too
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(ckpt.path), dtype=dtype or "auto", use_safetensors=True,
                                                     trust_remote_code=False, **kwargs)
    except ValueError as exc:  # accelerate: the model does not fit the devices given
        raise ConfigError(f"--device-map {device_map}: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model.eval()


def head_weight(ckpt: Checkpoint, model) -> torch.Tensor:
    """The lm_head weight as stored in the checkpoint (an offloaded head is only a placeholder on
    the 'meta' device between forwards); the input embedding when the two are tied."""
    head = model.get_output_embeddings()
    name = next(n for n, module in model.named_modules() if module is head) + ".weight"
    if name not in ckpt.names():
        embedding = model.get_input_embeddings()
        name = next(n for n, module in model.named_modules() if module is embedding) + ".weight"
    return ckpt.read(name)

