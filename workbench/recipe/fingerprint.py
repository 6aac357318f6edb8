"""A step's fingerprint: a hash of everything that determines its output.

kind + parameters, where every input checkpoint is replaced by its content fingerprint, every
data file and LoRA adapter by its content hash (and what a kind says of its own parameters,
``StepKind.fingerprint_part``: a teacher cache by its manifest's hash), + the workbench version.
Two runs with the same fingerprint produce the same output, so the second one is skipped.
Each parameter's part is kept too, so a re-run can say which parameter or input changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workbench import __version__
from workbench.checkpoint import Checkpoint, file_fingerprint
from workbench.recipe.kinds import KINDS
from workbench.recipe.refs import Ref, WithAdapter


class ContentHashes:
    """Fingerprints of checkpoints and files named by path, computed once per run."""

    def __init__(self):
        self.cache: dict[Path, str] = {}

    def of(self, path: Path) -> str:
        if path not in self.cache:
            self.cache[path] = Checkpoint(path).fingerprint() if path.is_dir() else file_fingerprint(path)
        return self.cache[path]

    def of_adapter(self, path: Path) -> str:
        """A peft adapter directory by its adapter_* files (config and weights), not its README,
        which names where the base model was."""
        return _digest({file.name: self.of(file) for file in sorted(path.glob("adapter_*"))})


def _digest(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def step_fingerprint(kind: str, params: dict, upstream: dict[str, str],
                     hashes: ContentHashes) -> tuple[str, dict[str, str]]:
    """(fingerprint, {part: hash}); ``upstream`` maps each dependency's step id to its
    output fingerprint."""

    def canonical(value):
        if isinstance(value, Ref):
            return {"checkpoint": upstream[value.step], **({"path": value.path} if value.path else {})}
        if isinstance(value, WithAdapter):
            lora = value.adapter
            return {"model": canonical(value.model),
                    "lora": {"adapter": hashes.of_adapter(lora)} if isinstance(lora, Path) else canonical(lora)}
        if isinstance(value, Path):
            return {"content": hashes.of(value)}
        if isinstance(value, dict):
            return {str(k): canonical(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return value

    spec = KINDS[kind]
    parts = {key: _digest(spec.fingerprint_part(key, value, canonical, hashes)) for key, value in params.items()}
    parts["(kind)"] = _digest(kind)
    parts["(workbench version)"] = _digest(__version__)
    return _digest(parts), parts
