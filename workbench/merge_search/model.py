"""One model held in memory for the whole search; each trial's merge is copied into it.

Loading the model once and overwriting its weights with the merge engine's tensors
(``workbench.merge.tensors``) skips what a merge to disk costs every trial: writing the
shards, fingerprinting them, building a fresh model and reading them back
(scripts/bench_merge_search.py measures both ways). The model is built from the checkpoint
whose config a merged checkpoint gets (the base model, else the first model) in the dtype the
merge writes, so it holds exactly the tensors ``workbench merge`` would write.
"""

from __future__ import annotations

import torch

from workbench import merge
from workbench.checkpoint import unique_state_dict
from workbench.errors import CheckpointError
from workbench.merge import MergeConfig


class MergedModel:
    """The model and tokenizer a search evaluates, reloaded with each trial's merge."""

    def __init__(self, config: MergeConfig):
        from workbench.modeling import load_tokenizer

        self.source = (config.base_model or config.models[0].ref).path
        self.tokenizer = load_tokenizer(merge.tokenizer_dir(config))
        self.model = None
        self._params: dict[str, torch.Tensor] = {}

    def load(self, config: MergeConfig) -> None:
        """Merge ``config`` in memory into the held model (built at the first call)."""
        from workbench.modeling import load_model

        written: set[str] = set()
        for name, tensor in merge.tensors(config):
            if self.model is None:  # the first tensor is in the dtype the merge writes
                self.model = load_model(self.source, dtype=tensor.dtype)
                self._params = self.model.state_dict()
            target = self._params.get(name)
            if target is None or target.shape != tensor.shape:
                raise CheckpointError(f"merged tensor '{name}' {list(tensor.shape)} has no place in the "
                                      f"{self.source} model (its architecture does not load it)")
            with torch.no_grad():
                target.copy_(tensor)
            written.add(name)
        expected = set(unique_state_dict(self.model))
        missing = sorted(expected - written)
        if missing:
            raise CheckpointError(f"the merge gives no tensor '{missing[0]}' that the {self.source} model "
                                  "needs")
