"""`merge`: mergekit's config schema unchanged, with step ids allowed wherever it names a
model (models[].model, base_model, tokenizer_source, slices[].sources[].model), each side of
MODEL+LORA too: a step id after '+' stands for the adapter that step published."""

from __future__ import annotations

import typing
from pathlib import Path

from workbench.recipe.kinds.base import StepCall, StepKind, as_strings, stand_ins
from workbench.recipe.refs import Ref, WithAdapter

ADAPTER = "adapter"


class Merge(StepKind):
    name = "merge"
    required = ("merge_method",)
    free_form = True  # checked by the merge engine's own validation

    def parameters(self) -> dict[str, object]:
        from workbench.merge import TOP_LEVEL_KEYS

        return {key: typing.Any for key in TOP_LEVEL_KEYS}

    def resolve(self, step, inputs, problems) -> None:
        from workbench.merge import TOKENIZER_SOURCE_WORDS

        def resolve_model(value, key: str):
            if not isinstance(value, str) or "+" not in value:
                return inputs.checkpoint(step, value, key, many=False)
            model, _, adapter = value.partition("+")
            if not model or not adapter or "+" in adapter:
                problems.add(f"'{value}' is neither MODEL nor MODEL+LORA", step.id, key)
                return value
            resolved = inputs.checkpoint(step, adapter, key, many=False)
            if isinstance(resolved, Ref):
                place = inputs.published(resolved.step, ADAPTER)
                if place is None:
                    problems.add(f"'{adapter}' after '+' must be a LoRA adapter, but step '{adapter}' writes "
                                 f"none ({inputs.publishers(ADAPTER)} does)", step.id, key)
                resolved = Ref(resolved.step, place or "")
            elif isinstance(resolved, Path) and not (resolved / "adapter_config.json").is_file():
                problems.add(f"'{adapter}' after '+' is not a LoRA adapter (no adapter_config.json)", step.id, key)
            return WithAdapter(inputs.checkpoint(step, model, key, many=False), resolved)

        params = step.params
        entries = list(params.get("models") or [])
        for sl in params.get("slices") or []:
            entries.extend(sl.get("sources", []) if isinstance(sl, dict) else [])
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and "model" in entry:
                entry["model"] = resolve_model(entry["model"], f"models[{i}].model")
            else:
                problems.add("each entry needs a 'model'", step.id, f"models[{i}]")
        if params.get("base_model") is not None:
            params["base_model"] = resolve_model(params["base_model"], "base_model")
        source = params.get("tokenizer_source")
        if isinstance(source, str) and source not in TOKENIZER_SOURCE_WORDS:
            params["tokenizer_source"] = resolve_model(source, "tokenizer_source")

    def validate(self, step, stand_in: str) -> None:
        """The merge engine's own validation (methods, parameters, ranges); inputs from other
        steps stand in as existing directories: they are built before the merge runs."""
        from workbench.merge import validate_config

        validate_config(stand_ins(step.params, stand_in), self.name)

    def run(self, call: StepCall) -> Path:
        from workbench import merge

        return merge.run(as_strings(call.params), call.out, overwrite=True, progress=True).path

