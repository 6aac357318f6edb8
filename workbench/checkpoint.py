"""Hugging Face-layout safetensors checkpoints: the interface between every step.

A checkpoint is a directory that ``transformers.AutoModelForCausalLM.from_pretrained``
loads: ``config.json``, ``model.safetensors`` (or shards plus ``model.safetensors.index.json``),
tokenizer files, optional ``generation_config.json``, and ``workbench.json`` with the lineage
(what made it, from which inputs, with which parameters) and a cached content fingerprint.

Reading is lazy (headers only until a tensor is asked for, then one memory-mapped tensor).
Writing streams tensors into pre-planned shards inside a hidden temporary sibling directory
that is renamed into place only when complete, so a checkpoint exists whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import torch

from workbench import __version__, atomic
from workbench.errors import CheckpointError
from workbench.safetensors_io import CODE_OF_DTYPE, PlannedTensor, ShardFile, TensorInfo, read_header, tensor_bytes

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LINEAGE_FILE = "workbench.json"
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SUPPORT_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
FINGERPRINT_BLOCK_BYTES = 8 * 1024**2
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys that describe how a config was written rather than what the model is (the
# tensor dtypes are hashed with the tensors themselves).
VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "dtype", "torch_dtype")


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' (or None) to a torch dtype."""
    if name is None:
        return None
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPE_NAMES:
        raise CheckpointError(f"unknown dtype '{name}' (expected one of {', '.join(DTYPE_NAMES)})")
    return DTYPE_NAMES[key]


def read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc


def json_type_name(value) -> str:
    """What a parsed JSON value is, in JSON's words."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def pickle_files(directory: Path) -> list[str]:
    """The names of the pickle weight files (``PICKLE_PATTERNS``) in a directory, sorted."""
    return sorted(p.name for pattern in PICKLE_PATTERNS for p in directory.glob(pattern))


def pickle_refusal(directory: Path, pickles: list[str], convert: str) -> CheckpointError:
    """The error for a directory whose only weights are pickles; ``convert`` is the call
    that rewrites them as safetensors."""
    return CheckpointError(
        f"{directory}: holds only pickle weights ({', '.join(pickles)}); the workbench reads "
        "safetensors only because unpickling can run arbitrary code. Convert once, from a "
        f"source you trust: {convert}"
    )


class Checkpoint:
    """A validated, lazily read checkpoint directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: checkpoint directory does not exist")
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: is a file, expected a checkpoint directory")
        config_path = self.path / CONFIG_FILE
        if not config_path.exists():
            raise CheckpointError(
                f"{self.path}: no config.json, so this is not a Hugging Face checkpoint directory"
            )
        self.config: dict = read_json(config_path)
        if not isinstance(self.config, dict):
            raise CheckpointError(f"{config_path}: expected a JSON object of model settings, "
                                  f"got {json_type_name(self.config)}")
        self.shard_files = self._find_weight_files()
        self.tensors: dict[str, TensorInfo] = {}
        for shard in self.shard_files:
            for name, info in read_header(shard).items():
                if name in self.tensors:
                    raise CheckpointError(f"{shard}: tensor '{name}' appears in two shards")
                self.tensors[name] = info
        self._handles: dict[Path, object] = {}

    def _find_weight_files(self) -> list[Path]:
        index_path = self.path / INDEX_FILE
        if index_path.exists():
            index = read_json(index_path)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_path}: no 'weight_map' object")
            shards = []
            for shard_name in dict.fromkeys(weight_map.values()):
                shard = self.path / shard_name
                if not shard.exists():
                    raise CheckpointError(
                        f"{index_path}: names shard '{shard_name}', which does not exist"
                    )
                shards.append(shard)
            return shards
        single = self.path / SINGLE_FILE
        if single.exists():
            return [single]
        pickles = pickle_files(self.path)
        if pickles:
            raise pickle_refusal(self.path, pickles,
                                 "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR)")
        raise CheckpointError(f"{self.path}: no model.safetensors or {INDEX_FILE}")

    # --- reading -------------------------------------------------------------------------

    def names(self) -> list[str]:
        return list(self.tensors)

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor '{name}'") from None

    def read(self, name: str) -> torch.Tensor:
        """One tensor, memory-mapped from disk (a copy owned by the caller)."""
        from safetensors import safe_open

        info = self.info(name)
        handle = self._handles.get(info.file)
        if handle is None:
            handle = self._handles[info.file] = safe_open(str(info.file), framework="pt")
        return handle.get_tensor(name)

    # --- what the model is ---------------------------------------------------------------

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type", "unknown")

    @property
    def text_config(self) -> dict:
        return self.config.get("text_config", self.config)

    @property
    def num_layers(self) -> int | None:
        cfg = self.text_config
        return cfg.get("num_hidden_layers", cfg.get("n_layer"))

    @property
    def vocab_size(self) -> int | None:
        return self.text_config.get("vocab_size")

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.text_config.get("tie_word_embeddings", False)))

    @property
    def num_parameters(self) -> int:
        return sum(info.numel for info in self.tensors.values())

    @property
    def total_bytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    @property
    def chat_template(self) -> str | None:
        jinja = self.path / "chat_template.jinja"
        if jinja.exists():
            return jinja.read_text()
        tok_cfg = self.path / "tokenizer_config.json"
        if tok_cfg.exists():
            template = read_json(tok_cfg).get("chat_template")
            if isinstance(template, str):
                return template
        return None

    @property
    def lineage(self) -> dict | None:
        path = self.path / LINEAGE_FILE
        return read_json(path) if path.exists() else None

    # --- fingerprint ---------------------------------------------------------------------

    def _file_stamps(self) -> dict[str, list[int]]:
        stamps = {}
        for path in [self.path / CONFIG_FILE, *self.shard_files]:
            stat = path.stat()
            stamps[path.name] = [stat.st_size, stat.st_mtime_ns]
        return stamps

    def fingerprint(self) -> str:
        """Content hash of the config and every tensor, cached in workbench.json while the
        files it was computed from are unchanged (size and mtime)."""
        lineage = self.lineage or {}
        stamps = self._file_stamps()
        if lineage.get("fingerprint") and lineage.get("fingerprint_of") == stamps:
            return lineage["fingerprint"]
        return compute_fingerprint(self)


class ContentHash:
    """A checkpoint's fingerprint, fed piece by piece: blake2b over the config (minus
    volatile keys), then every tensor's name, dtype code, shape and bytes, in name order;
    independent of how the tensors are split into shards."""

    def __init__(self, config: dict):
        self.digest = hashlib.blake2b(digest_size=16)
        self.config_text = json.dumps(stable_config(config), sort_keys=True)
        self.digest.update(self.config_text.encode())

    def start_tensor(self, name: str, dtype_code: str, shape: tuple[int, ...]) -> None:
        self.digest.update(f"{name}|{dtype_code}|{tuple(shape)}".encode())

    def update(self, data) -> None:
        self.digest.update(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def stable_config(config: dict) -> dict:
    """The part of a config.json that says what the model is (the fingerprinted part)."""
    return {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}


def compute_fingerprint(ckpt: Checkpoint) -> str:
    """The ``ContentHash`` of a checkpoint on disk.

    Bytes are read in blocks into one reusable buffer rather than through a memory map, so
    hashing a multi-GB checkpoint does not leave the whole file resident in this process."""
    content = ContentHash(ckpt.config)
    block = bytearray(FINGERPRINT_BLOCK_BYTES)
    view = memoryview(block)
    files: dict[Path, object] = {}
    try:
        for name in sorted(ckpt.tensors):
            info = ckpt.tensors[name]
            content.start_tensor(name, info.dtype, info.shape)
            if info.file not in files:
                files[info.file] = open(info.file, "rb", buffering=0)
            f = files[info.file]
            f.seek(info.start)
            remaining = info.nbytes
            while remaining:
                got = f.readinto(view[: min(remaining, len(block))])
                if not got:
                    raise CheckpointError(f"{info.file}: truncated while reading tensor '{name}'")
                content.update(view[:got])
                remaining -= got
    finally:
        for f in files.values():
            f.close()
    return content.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> str:
    """Content hash of a data file, streamed."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"workbench": __version__}
    for package in ("torch", "transformers", "safetensors", "peft", "mergekit"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def make_lineage(
    kind: str,
    parameters: dict | None = None,
    inputs: dict[str, "Checkpoint | str | os.PathLike"] | None = None,
    metrics: dict | None = None,
) -> dict:
    """The lineage record for workbench.json: the step kind, its parameters, each input
    (checkpoint or data file) with its fingerprint, package versions and UTC time."""
    recorded_inputs = {}
    for role, item in (inputs or {}).items():
        if isinstance(item, Checkpoint):
            recorded_inputs[role] = {"path": str(item.path), "fingerprint": item.fingerprint()}
        else:
            recorded_inputs[role] = {"path": str(item), "fingerprint": file_fingerprint(item)}
    return {
        "kind": kind,
        "parameters": parameters or {},
        "inputs": recorded_inputs,
        "metrics": metrics or {},
        "versions": package_versions(),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class CheckpointWriter:
    """Writes a checkpoint atomically, streaming tensors into pre-planned shards.

    Every tensor's name, shape and dtype is known up front (``plan``), so each shard's
    header is written first and each tensor is written to its offset as it arrives: memory
    use is bounded by one tensor, whatever the model's size. Everything goes into a hidden
    staging sibling (``workbench.atomic``) that ``commit`` fsyncs and renames to ``NAME``.
    Use as a context manager: an exception removes the temporary directory.

    ``config``, when given, is written as config.json at once, and the tensors written in
    name order are fingerprinted as they pass, sparing ``commit`` a second read of every
    byte (it re-reads the files when the tensors came in another order or config.json was
    rewritten).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        plan: Iterable[PlannedTensor],
        *,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        overwrite: bool = False,
        config: dict | None = None,
    ):
        self.out_dir = Path(out_dir)
        atomic.recover(self.out_dir)  # first: a replacement killed mid-way puts the old one back
        if self.out_dir.exists() and not overwrite:
            raise CheckpointError(f"{self.out_dir}: already exists (pass --overwrite to replace it)")
        atomic.check_replaceable(self.out_dir)
        self.tmp_dir = atomic.new_staging_dir(self.out_dir)
        self.bytes_written = 0
        self.shards: list[ShardFile] = []
        self.shard_of: dict[str, ShardFile] = {}
        groups = _group_into_shards(list(plan), max_shard_bytes)
        for i, group in enumerate(groups):
            name = SINGLE_FILE if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            shard = ShardFile(self.tmp_dir / name, group)
            self.shards.append(shard)
            for tensor in group:
                self.shard_of[tensor.name] = shard
        self._content: ContentHash | None = None
        if config is not None:
            self.write_json(CONFIG_FILE, config)
            self._content = ContentHash(config)
            self._names_to_hash = iter(sorted(self.shard_of))
            self._next_to_hash = next(self._names_to_hash, None)

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard = self.shard_of[name]
        planned = shard.planned[name]
        data = tensor.to(planned.dtype)
        shard.write(name, data)
        self.bytes_written += planned.nbytes
        if self._content is None:
            return
        if name != self._next_to_hash:
            self._content = None  # out of name order: commit hashes the files instead
            return
        self._content.start_tensor(name, CODE_OF_DTYPE[planned.dtype], planned.shape)
        self._content.update(tensor_bytes(data))
        self._next_to_hash = next(self._names_to_hash, None)

    def write_json(self, filename: str, obj: dict) -> None:
        with open(self.tmp_dir / filename, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")

    def write_text(self, filename: str, text: str) -> None:
        (self.tmp_dir / filename).write_text(text)

    def copy_support_files(self, source_dir: str | os.PathLike, include_config: bool = False) -> None:
        """Copy tokenizer files, chat template and generation config (and config.json if asked)."""
        names = SUPPORT_FILES + ((CONFIG_FILE,) if include_config else ())
        for name in names:
            src = Path(source_dir) / name
            if src.exists():
                shutil.copyfile(src, self.tmp_dir / name)

    @property
    def staging_dir(self) -> Path:
        """Where extra files (tokenizer.save_pretrained, ...) go before commit."""
        return self.tmp_dir

    def commit(self, lineage: dict | None = None) -> Checkpoint:
        missing = [n for s in self.shards for n in s.planned if n not in s.written]
        if missing:
            raise RuntimeError(f"commit with unwritten tensors: {missing[:5]}")
        for shard in self.shards:
            shard.close()
        if len(self.shards) > 1:
            self.write_json(
                INDEX_FILE,
                {
                    "metadata": {"total_size": sum(s.total_bytes - s.data_start for s in self.shards)},
                    "weight_map": {n: s.path.name for s in self.shards for n in s.planned},
                },
            )
        if not (self.tmp_dir / CONFIG_FILE).exists():
            raise RuntimeError("commit without config.json")
        staged = Checkpoint(self.tmp_dir)
        record = dict(lineage or {})
        record["fingerprint"] = self._streamed_fingerprint(staged) or compute_fingerprint(staged)
        record["fingerprint_of"] = staged._file_stamps()
        self.write_json(LINEAGE_FILE, record)
        atomic.commit_dir(self.tmp_dir, self.out_dir)
        return Checkpoint(self.out_dir)

    def _streamed_fingerprint(self, staged: Checkpoint) -> str | None:
        """The fingerprint hashed while writing, if it covers what was staged."""
        if self._content is None or self._next_to_hash is not None:
            return None
        if json.dumps(stable_config(staged.config), sort_keys=True) != self._content.config_text:
            return None
        return self._content.hexdigest()

    def abort(self) -> None:
        for shard in self.shards:
            shard.abort()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def _group_into_shards(plan: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in plan:
        if groups[-1] and size + tensor.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(tensor)
        size += tensor.nbytes
    return groups


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict without tied duplicates (lm_head.weight when it is the
    embedding), as transformers' save_pretrained writes it."""
    seen: set[int] = set()
    tensors = {}
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    for name, tensor in model.state_dict().items():
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor shard
        key = local.untyped_storage().data_ptr() if local.numel() else id(tensor)
        if name in tied or (key in seen and tensor.numel()):
            continue
        seen.add(key)
        tensors[name] = tensor
    return tensors


def save_model(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    *,
    lineage: dict,
    support_from: str | os.PathLike | None = None,
    tokenizer=None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    extra_files: dict[str, str] | None = None,
    materialize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Checkpoint:
    """Write an in-memory transformers model as a checkpoint (config, weights, tokenizer,
    generation config, lineage), atomically. ``materialize`` turns each state-dict tensor into
    the whole tensor to write, one at a time (an FSDP model's shards are gathered that way)."""
    tensors = unique_state_dict(model)
    plan = [PlannedTensor(n, tuple(t.shape), dtype or t.dtype) for n, t in tensors.items()]
    with CheckpointWriter(out_dir, plan, overwrite=overwrite, max_shard_bytes=max_shard_bytes) as writer:
        for name, tensor in tensors.items():
            writer.write(name, materialize(tensor) if materialize else tensor)
        if support_from is not None:
            writer.copy_support_files(support_from)
        if tokenizer is not None:
            tokenizer.save_pretrained(writer.staging_dir)
        if not getattr(model.config, "architectures", None):
            model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(writer.staging_dir)
        if dtype is not None:
            config = read_json(writer.staging_dir / CONFIG_FILE)
            config["dtype"] = str(dtype).removeprefix("torch.")
            writer.write_json(CONFIG_FILE, config)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None and not (writer.staging_dir / "generation_config.json").exists():
            generation_config.save_pretrained(writer.staging_dir)
        for filename, text in (extra_files or {}).items():
            writer.write_text(filename, text)
        return writer.commit(lineage)
