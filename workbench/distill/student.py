"""Cut a student from a teacher: same embeddings, final norm and lm_head, fewer decoder layers.

The student keeps the teacher's tokenizer (so distillation compares the same token ids) and
starts from some of its layers rather than from random weights. Tensors are streamed from the
teacher into the student's shards one at a time, so any teacher size fits in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from workbench.checkpoint import CONFIG_FILE, Checkpoint, CheckpointWriter, make_lineage
from workbench.constants import LAYER_NAME
from workbench.errors import CheckpointError, ConfigError
from workbench.safetensors_io import PlannedTensor

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer")
# workbench.json "kind" of a checkpoint that `student init` wrote (an untrained cut)
LINEAGE_KIND = "student-init"


def spread_layers(teacher_layers: int, num_layers: int) -> list[int]:
    """``num_layers`` indices spread evenly over the teacher's, keeping the first and last."""
    if num_layers == 1:
        return [0]
    step = (teacher_layers - 1) / (num_layers - 1)
    return [round(i * step) for i in range(num_layers)]


def choose_layers(teacher_layers: int, num_layers: int | None, layers: list[int] | None) -> list[int]:
    """The teacher layers the student keeps, in order; ConfigError on a bad choice."""
    if (num_layers is None) == (layers is None):
        raise ConfigError("give exactly one of num_layers (--num-layers) or layers (--layers)")
    if num_layers is not None:
        if not 1 <= num_layers < teacher_layers:
            raise ConfigError(f"--num-layers must be between 1 and {teacher_layers - 1} "
                              f"(the teacher has {teacher_layers} layers), got {num_layers}")
        return spread_layers(teacher_layers, num_layers)
    if not layers:
        raise ConfigError("--layers is empty: list the teacher layers to keep, e.g. 0,3,6")
    outside = [i for i in layers if not 0 <= i < teacher_layers]
    if outside:
        raise ConfigError(f"--layers: index {outside[0]} is out of range (the teacher has layers "
                          f"0 to {teacher_layers - 1})")
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise ConfigError(f"--layers: layer {repeated[0]} is listed more than once")
    if len(layers) >= teacher_layers:
        raise ConfigError(f"--layers keeps all {teacher_layers} teacher layers; a student needs fewer")
    return list(layers)


def parse_layer_list(text: str) -> list[int]:
    """'0,3,6' -> [0, 3, 6]."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--layers must be comma-separated integers like 0,3,6, got {text!r}") from None


def student_config(config: dict, keep: list[int], teacher_layers: int) -> dict:
    """The teacher's config with the layer count and every per-layer list cut to ``keep``."""
    config = dict(config)
    text = config.get("text_config", config)
    for key in LAYER_COUNT_KEYS:
        if key in text:
            text[key] = len(keep)
    for key, value in list(text.items()):
        if isinstance(value, list) and len(value) == teacher_layers and key != "architectures":
            text[key] = [value[i] for i in keep]
    if isinstance(text.get("max_window_layers"), int):  # qwen2: layers below it use full attention
        text["max_window_layers"] = sum(1 for i in keep if i < text["max_window_layers"])
    return config


def init_student(teacher: str | os.PathLike | Checkpoint, out_dir: str | os.PathLike,
                 num_layers: int | None = None, layers: list[int] | None = None,
                 overwrite: bool = False, tokenizer: str | os.PathLike | None = None) -> Checkpoint:
    """Write a student with the teacher's non-layer tensors and the chosen decoder layers
    (renumbered 0..n-1), its tokenizer files and an adjusted config.

    With ``tokenizer`` (a directory holding a fast tokenizer with a chat template) the student
    speaks that tokenizer instead: its embedding and lm_head rows are made from the teacher's
    (``cross_tokenizer.transplant``) and the lineage reports how many tokens mapped exactly."""
    teacher = teacher if isinstance(teacher, Checkpoint) else Checkpoint(teacher)
    if tokenizer is not None:
        return _init_with_tokenizer(teacher, out_dir, num_layers, layers, overwrite, tokenizer)
    teacher_layers = teacher.num_layers
    if not teacher_layers:
        raise CheckpointError(f"{teacher.path}: config.json gives no layer count "
                              f"({' or '.join(LAYER_COUNT_KEYS)})")
    keep = choose_layers(teacher_layers, num_layers, layers)
    renames = _student_names(teacher, keep)
    plan = [PlannedTensor(new, teacher.info(old).shape, teacher.info(old).torch_dtype)
            for old, new in renames.items()]
    student_params = sum(teacher.info(old).numel for old in renames)
    lineage = make_lineage(
        LINEAGE_KIND,
        {"layers": keep, "num_layers": len(keep), "teacher_layers": teacher_layers},
        inputs={"teacher": teacher},
        metrics={"teacher_parameters": teacher.num_parameters, "parameters": student_params,
                 "parameters_vs_teacher": round(student_params / teacher.num_parameters, 4)},
    )
    with CheckpointWriter(out_dir, plan, overwrite=overwrite) as writer:
        for old, new in renames.items():
            writer.write(new, teacher.read(old))
        writer.copy_support_files(teacher.path)
        writer.write_json(CONFIG_FILE, student_config(teacher.config, keep, teacher_layers))
        return writer.commit(lineage)


def _init_with_tokenizer(teacher: Checkpoint, out_dir, num_layers, layers, overwrite, tokenizer_dir) -> Checkpoint:
    from workbench.distill.cross_tokenizer.pairing import require_offsets
    from workbench.distill.cross_tokenizer.transplant import row_sources, transplant_rows
    from workbench.modeling import load_tokenizer

    new_tokenizer, teacher_tokenizer = _tokenizer_at(tokenizer_dir), load_tokenizer(teacher.path)
    require_offsets(new_tokenizer, tokenizer_dir)
    if not getattr(new_tokenizer, "chat_template", None):
        raise ConfigError(f"{tokenizer_dir}: the tokenizer has no chat template (the student could not render chat data)")
    keep = choose_layers(teacher.num_layers, num_layers, layers)
    renames = _student_names(teacher, keep)
    teacher_vocab = (teacher.config.get("text_config", teacher.config)).get("vocab_size")
    vocab_tensors = {old for old in renames if len(teacher.info(old).shape) == 2
                     and teacher.info(old).shape[0] == teacher_vocab}
    if not vocab_tensors:
        raise CheckpointError(f"{teacher.path}: no embedding tensor of {teacher_vocab} rows (config vocab_size)")
    new_vocab = len(new_tokenizer)
    sources, report = row_sources(new_tokenizer, teacher_tokenizer, new_vocab)
    plan = []
    for old, new in renames.items():
        shape = teacher.info(old).shape
        plan.append(PlannedTensor(new, (new_vocab, shape[1]) if old in vocab_tensors else shape,
                                  teacher.info(old).torch_dtype))
    student_params = sum(_numel(p.shape) for p in plan)
    lineage = make_lineage(
        LINEAGE_KIND,
        {"layers": keep, "num_layers": len(keep), "teacher_layers": teacher.num_layers,
         "tokenizer": str(tokenizer_dir)},
        inputs={"teacher": teacher},
        metrics={"teacher_parameters": teacher.num_parameters, "parameters": student_params,
                 "parameters_vs_teacher": round(student_params / teacher.num_parameters, 4),
                 "vocab": new_vocab, "tokens": report.to_dict()},
    )
    config = student_config(teacher.config, keep, teacher.num_layers)
    text = config.get("text_config", config)
    text["vocab_size"] = new_vocab
    ids = {f"{kind}_token_id": getattr(new_tokenizer, f"{kind}_token_id") for kind in ("bos", "eos", "pad")}
    text.update(ids)
    with CheckpointWriter(out_dir, plan, overwrite=overwrite) as writer:
        for old, new in renames.items():
            tensor = teacher.read(old)
            writer.write(new, transplant_rows(tensor, sources) if old in vocab_tensors else tensor)
        writer.copy_support_files(tokenizer_dir)
        writer.write_json(CONFIG_FILE, config)
        generation = teacher.path / "generation_config.json"
        if generation.is_file():
            import json

            writer.write_json("generation_config.json", {**json.loads(generation.read_text()), **ids})
        return writer.commit(lineage)


def _tokenizer_at(path):
    """A tokenizer directory (no model files needed)."""
    from transformers import AutoTokenizer

    if not (Path(path) / "tokenizer_config.json").is_file() and not (Path(path) / "tokenizer.json").is_file():
        raise ConfigError(f"{path}: no tokenizer.json or tokenizer_config.json (expected a tokenizer directory)")
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)


def _numel(shape) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def _student_names(teacher: Checkpoint, keep: list[int]) -> dict[str, str]:
    """Teacher tensor name -> student tensor name for every tensor the student keeps."""
    new_index = {old: new for new, old in enumerate(keep)}
    renames, seen_layers = {}, set()
    for name in teacher.names():
        match = LAYER_NAME.match(name)
        if match is None:
            renames[name] = name
            continue
        index = int(match["index"])
        seen_layers.add(index)
        if index in new_index:
            renames[name] = f"{match['prefix']}.{new_index[index]}.{match['rest']}"
    if seen_layers != set(range(teacher.num_layers)):
        raise CheckpointError(
            f"{teacher.path}: cannot find decoder layers 0..{teacher.num_layers - 1} in the tensor names "
            "(expected model.layers.N.*, transformer.h.N.*, ...blocks.N.* or ...layer.N.*)")
    return renames
