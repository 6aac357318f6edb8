"""Offline teacher: its top-k next-token log-probabilities, computed once, reused by many students.

A cache directory holds ``teacher_cache.json`` (what it was made from: teacher, data and
tokenizer fingerprints, top-k, temperature, the data settings that decide the examples, and
its size) and ``topk.safetensors``: for every supervised token of every train and validation
example, in order, the top-k ids (uint16 when the vocab fits, else int32), their log-probs and
the log of the remaining probability mass (float16 by default), plus each example's content
key and first row. Examples are found by content, so the cache is independent of shuffling
and packing. The directory appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench import atomic
from workbench.checkpoint import Checkpoint, file_fingerprint, parse_dtype
from workbench.constants import IGNORE_INDEX
from workbench.distill.losses import LossSpec, SparseTeacher, sparse_from_logprobs
from workbench.errors import ConfigError

MANIFEST = "teacher_cache.json"
TENSORS = "topk.safetensors"
FORMAT = 1


def example_key(example) -> int:
    """A 63-bit content key of a tokenized example (its ids and labels)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(torch.tensor(example.input_ids, dtype=torch.int64).numpy().tobytes())
    digest.update(torch.tensor(example.labels, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def supervised_next_tokens(example) -> int:
    """How many next-token targets an example supervises (the rows it owns in the cache)."""
    return sum(label != IGNORE_INDEX for label in example.labels[1:])


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the token -> id map (added tokens included): equal maps give equal token ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.blake2b(json.dumps(vocab).encode(), digest_size=16).hexdigest()


@dataclass
class TeacherCache:
    """A cache directory opened for training: manifest, and rows looked up by example."""

    path: Path
    manifest: dict
    ids: torch.Tensor
    logprobs: torch.Tensor
    rest: torch.Tensor
    first_row: dict[int, int]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # what a cross-tokenizer cache adds

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TeacherCache":
        from safetensors.torch import load_file

        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise ConfigError(f"{path}: not a teacher cache (no {MANIFEST}; make one with "
                              "`workbench distill cache-teacher`)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT:
            raise ConfigError(f"{manifest_path}: cache format {manifest.get('format')}, expected {FORMAT}")
        tensors = load_file(str(path / TENSORS))
        first_row = dict(zip(tensors.pop("example_keys").tolist(), tensors.pop("example_rows").tolist()))
        return cls(path, manifest, tensors.pop("ids"), tensors.pop("logprobs"), tensors.pop("rest_logprob"), first_row,
                   tensors)

    def check_matches(self, *, data_fingerprint: str, val_data_fingerprint: str | None,
                      teacher_fingerprint: str | None, tokenizer_print: str, settings: dict) -> None:
        """Refuse a cache made from other data, another teacher or tokenizer, or other settings."""
        made = self.manifest
        where = self.path / MANIFEST
        if made["data_fingerprint"] != data_fingerprint:
            raise ConfigError(f"{where}: the cache was made from other data ({made['data']}, fingerprint "
                              f"{made['data_fingerprint'][:12]}); remake it for this --data")
        if made.get("val_data_fingerprint") != val_data_fingerprint:
            raise ConfigError(f"{where}: the cache was made with other validation data; remake it")
        if teacher_fingerprint is not None and made["teacher_fingerprint"] != teacher_fingerprint:
            raise ConfigError(f"{where}: the cache was made by another teacher ({made['teacher']}, fingerprint "
                              f"{made['teacher_fingerprint'][:12]}); remake it for this --teacher")
        if made["tokenizer_fingerprint"] != tokenizer_print:
            raise ConfigError(f"{where}: the cache was made for another student tokenizer than this student's; "
                              "remake it for this --student")
        for key, value in settings.items():
            if made[key] != value:
                raise ConfigError(f"{where}: the cache was made with {key} = {made[key]!r}, this run uses "
                                  f"{value!r}; remake the cache or use the same {key}")

    def rows_for(self, examples) -> SparseTeacher:
        """The teacher rows of these examples' supervised tokens, in order."""
        pieces = []
        for example in examples:
            start = self.first_row.get(example_key(example))
            if start is None:
                raise ConfigError(f"{self.path}: holds no entry for example {example.source}; remake the cache")
            pieces.append(slice(start, start + supervised_next_tokens(example)))
        index = torch.cat([torch.arange(p.start, p.stop) for p in pieces])
        return SparseTeacher(self.ids[index].long(), self.logprobs[index].float(), self.rest[index].float(),
                             self.manifest["vocab_size"])


def cached_collate(collate, cache: TeacherCache):
    """A collate that adds the cached teacher rows of the batch (teacher_ids, teacher_logprobs,
    teacher_rest, and teacher_vocab) in the order in which the objective meets the supervised tokens: row by row,
    and within a packed row example by example."""

    def collate_with_teacher(rows):
        batch = collate(rows)
        examples = [example for row in rows for example in (row if isinstance(row, list) else [row])]
        teacher = cache.rows_for(examples)
        batch.update(teacher_ids=teacher.ids, teacher_logprobs=teacher.logprobs, teacher_rest=teacher.rest_logprob,
                     teacher_vocab=teacher.vocab)
        return batch

    return collate_with_teacher


@torch.no_grad()
def teacher_topk(hidden: torch.Tensor, weight: torch.Tensor, k: int, temperature: float,
                 chunk_size: int) -> SparseTeacher:
    """Top-k ids, log-probs and remaining log-mass of softmax(hidden @ weight.T / T), by chunks
    (``weight`` in float32)."""
    pieces = [sparse_from_logprobs(torch.log_softmax(
        (hidden[start:start + chunk_size].float() @ weight.T) / temperature, dim=1), k)
        for start in range(0, hidden.shape[0], chunk_size)]
    return SparseTeacher(*(torch.cat([piece[i] for piece in pieces]) for i in range(3)))


def write_cache(out: str | os.PathLike, manifest: dict, teacher: SparseTeacher, keys: list[int],
                first_rows: list[int], logprob_dtype: torch.dtype, extra: dict | None = None) -> dict:
    """Write the cache directory atomically (``extra`` tensors stored as they are); returns the
    manifest with its size added."""
    from safetensors.torch import save_file

    out = Path(out)
    vocab = manifest["vocab_size"]
    id_dtype = torch.uint16 if vocab <= 2**16 else torch.int32
    tensors = {
        "ids": teacher.ids.to(id_dtype).contiguous(),
        "logprobs": teacher.logprobs.to(logprob_dtype).contiguous(),
        "rest_logprob": teacher.rest_logprob.to(logprob_dtype).contiguous(),
        "example_keys": torch.tensor(keys, dtype=torch.int64),
        "example_rows": torch.tensor(first_rows, dtype=torch.int64),
        **{name: tensor.contiguous() for name, tensor in (extra or {}).items()},
    }
    tokens = teacher.ids.shape[0]
    per_token = sum(tensors[n].element_size() * tensors[n][0].numel() for n in ("ids", "logprobs", "rest_logprob"))
    manifest = {**manifest, "tokens": tokens, "bytes_per_token": per_token,
                "id_dtype": str(id_dtype).removeprefix("torch."),
                "logprob_dtype": str(logprob_dtype).removeprefix("torch.")}
    with atomic.staged_dir(out) as staging:
        save_file(tensors, str(staging / TENSORS))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> None:
    out = Path(out)
    atomic.recover(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists (pass --overwrite to replace it)")
    atomic.check_replaceable(out)


def open_teacher(teacher: str, top_k: int, temperature: float) -> Checkpoint:
    """The teacher's checkpoint, once a cache's settings fit it: top_k within its vocabulary,
    a positive temperature."""
    teacher_ckpt = Checkpoint(teacher)
    vocab = teacher_ckpt.vocab_size
    if not 1 <= top_k <= vocab:
        raise ConfigError(f"top_k must be between 1 and the teacher's vocab size {vocab}, got {top_k}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    return teacher_ckpt


def build_teacher_cache(teacher: str, data: str, out: str, *, top_k: int = 64, val_data: str | None = None,
                        val_split: float = 0.1, max_length: int = 1024, truncation: str = "truncate",
                        seed: int = 0, temperature: float = 1.0, dtype: str = "float16",
                        teacher_dtype: str | None = None, teacher_device: str | None = None,
                        device_map: str | None = None, max_memory: str | None = None, batch_size: int = 8,
                        chunk_size: int = 0, overwrite: bool = False) -> dict:
    """Run the teacher over the train and validation examples that `workbench distill` makes
    from ``data`` with the same settings, and write the cache; returns its manifest (with
    tokens and bytes_per_token). Distilling with it needs the same data settings and temperature.
    ``device_map`` spreads a teacher that fits no single device (``workbench.distill.placement``)."""
    from workbench.data import prepare_datasets
    from workbench.modeling import load_tokenizer

    teacher_ckpt = open_teacher(teacher, top_k, temperature)
    logprob_dtype = parse_dtype(dtype)
    check_placement(teacher_device, device_map, max_memory)
    check_out_dir(out, overwrite)
    tokenizer = load_tokenizer(teacher_ckpt.path)
    train_examples, val_examples, _ = prepare_datasets(
        data, tokenizer, max_length, val_path=val_data, val_split=val_split, seed=seed, truncation=truncation)
    examples = train_examples + val_examples
    with atomic.scratch_dir(out) as offload_dir:  # disk offload of a placed teacher, removed after
        model, weight = load_cache_teacher(teacher_ckpt, teacher_dtype, teacher_device, device_map, max_memory,
                                           offload_dir)
        cached, keys, first_rows = run_teacher(model, weight, examples, tokenizer, top_k, temperature, batch_size,
                                               chunk_size)
    manifest = {
        "format": FORMAT, "teacher": str(teacher_ckpt.path), "teacher_fingerprint": teacher_ckpt.fingerprint(),
        "data": str(data), "data_fingerprint": file_fingerprint(data),
        "val_data_fingerprint": file_fingerprint(val_data) if val_data else None,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "vocab_size": teacher_ckpt.vocab_size,
        "top_k": top_k, "temperature": temperature, "max_length": max_length, "truncation": truncation,
        "val_split": val_split, "seed": seed, "examples": len(examples),
    }
    return write_cache(out, manifest, cached, keys, first_rows, logprob_dtype)


def check_placement(teacher_device: str | None, device_map: str | None, max_memory: str | None) -> None:
    """The teacher's placement options, checked before anything is read or written."""
    from workbench.distill.placement import parse_devices, parse_max_memory

    if device_map and teacher_device:
        raise ConfigError("--teacher-device and --device-map both place the teacher: pick one")
    if max_memory and not device_map:
        raise ConfigError("--max-memory caps what --device-map puts on each device: give --device-map too")
    if device_map:
        parse_max_memory(max_memory, parse_devices(device_map))  # bad devices fail before anything is read


def load_cache_teacher(teacher_ckpt: Checkpoint, teacher_dtype: str | None, teacher_device: str | None,
                       device_map: str | None, max_memory: str | None, offload_dir) -> tuple[torch.nn.Module,
                                                                                          torch.Tensor]:
    """The teacher model, whole on ``teacher_device`` (default cpu) or spread by ``device_map``
    (disk offload under ``offload_dir``), and its lm_head weight in float32."""
    from workbench.distill.objective import output_weight
    from workbench.distill.placement import head_weight, load_placed_model
    from workbench.modeling import load_model

    if device_map:
        model = load_placed_model(teacher_ckpt.path, parse_dtype(teacher_dtype), device_map, max_memory,
                                  str(offload_dir))
        output_weight(model)  # refuses heads the loss cannot reproduce
        return model, head_weight(teacher_ckpt, model).to(parse_dtype(teacher_dtype) or model.dtype).float()
    model = load_model(teacher_ckpt.path, dtype=parse_dtype(teacher_dtype), device=teacher_device or "cpu")
    return model, output_weight(model).detach().float()


def input_device(model) -> torch.device:
    """Where a (possibly placed) model takes its input ids: its embedding's device (cpu for an
    embedding offloaded to disk)."""
    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


def run_teacher(model, weight: torch.Tensor, examples, tokenizer, top_k: int, temperature: float, batch_size: int,
                chunk_size: int) -> tuple[SparseTeacher, list[int], list[int]]:
    """The teacher's top-k rows for every supervised token of the examples, in order, with each
    example's content key and first row. Batches start where the model's embedding is (a placed
    model moves the activations along its devices)."""
    from workbench.data import pad_collate
    from workbench.modeling import pad_token_id
    from workbench.training.objectives import supervised_hidden_states

    device = input_device(model)
    weight = weight.to(device)
    tokens_per_chunk = LossSpec(chunk_size=chunk_size).chunk_tokens(weight.shape[0])
    pieces, keys, first_rows, row = [], [], [], 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad_collate(chunk, pad_id=pad_token_id(tokenizer)).items()}
        with torch.no_grad():
            hidden, _ = supervised_hidden_states(model, batch)
        pieces.append(teacher_topk(hidden.to(device), weight, top_k, temperature, tokens_per_chunk))
        for example in chunk:
            keys.append(example_key(example))
            first_rows.append(row)
            row += supervised_next_tokens(example)
    cached = SparseTeacher(*(torch.cat([p[i] for p in pieces]).cpu() for i in range(3)))
    return cached, keys, first_rows
