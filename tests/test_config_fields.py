"""Engine configs are composed of shared parts, each option defined once with its help text,
and seen flat by the CLI, YAML config files and recipes."""

from __future__ import annotations

import dataclasses

import click
import pytest

from workbench.commands.distill import distill as distill_command
from workbench.commands.sft import sft as sft_command
from workbench.distill.config import DistillConfig
from workbench.errors import ConfigError
from workbench.recipe.kinds import KINDS
from workbench.sft.config import SFTConfig
from workbench.training.config import DataConfig, TrainingConfig
from workbench.training.fields import PART, config_from_dict, flat_fields, flat_names, flat_values, option, part

ENGINES = {SFTConfig: sft_command, DistillConfig: distill_command}


def own_fields(cls) -> set[str]:
    return {item.name for item in dataclasses.fields(cls) if PART not in item.metadata}


def test_options_both_engines_take_are_defined_once_in_the_shared_parts():
    shared = set(flat_names(SFTConfig)) & set(flat_names(DistillConfig))
    parts = set(flat_names(DataConfig)) | set(flat_names(TrainingConfig))
    # out is each engine's own: its help says what that engine writes there
    assert shared == parts | {"out"}
    for cls in ENGINES:
        assert own_fields(cls) & parts == set(), cls.__name__
        assert {flat.path[0] for flat in flat_fields(cls) if flat.name in parts} == {"dataset", "train"}


def test_an_option_defined_twice_is_refused():
    @dataclasses.dataclass
    class Clash:
        lr: float = option(1.0, "A second lr.")
        train: TrainingConfig = part(TrainingConfig)

    with pytest.raises(TypeError, match="options defined more than once: lr"):
        flat_fields(Clash)


@pytest.mark.parametrize("cls", list(ENGINES), ids=lambda cls: cls.__name__)
def test_every_cli_option_takes_its_help_text_and_default_from_its_field(cls):
    options = {param.name: param for param in ENGINES[cls].params if isinstance(param, click.Option)}
    assert set(options) == set(flat_names(cls)) | {"config_file"}
    for flat in flat_fields(cls):
        assert flat.help, f"{flat.name} has no help text"
        text = options[flat.name].help
        assert text.startswith(flat.help), flat.name
        if flat.default not in (None, "", False):
            assert text.endswith(f"[default: {flat.default}]"), flat.name


def test_a_part_can_take_other_defaults_for_one_engine():
    assert dict((f.name, f.default) for f in flat_fields(DistillConfig))["lr"] == 1e-4
    assert dict((f.name, f.default) for f in flat_fields(SFTConfig))["lr"] == 2e-5
    distill_lr = {param.name: param.help for param in distill_command.params}["lr"]
    assert distill_lr == "Peak learning rate. [default: 0.0001]"


def test_flat_values_build_the_composed_config_and_come_back_flat():
    values = {"model": "m", "data": "d.jsonl", "out": "o", "lr": 1e-3, "val_split": 0.2, "lora_rank": 4}
    config = config_from_dict(SFTConfig, values)
    assert (config.train.lr, config.dataset.val_split, config.dataset.data, config.lora_rank) == (1e-3, 0.2,
                                                                                                  "d.jsonl", 4)
    flat = flat_values(config)
    assert {key: flat[key] for key in values} == values
    assert flat["epochs"] == 3 and list(flat) == flat_names(SFTConfig)


@pytest.mark.parametrize("cls", list(ENGINES), ids=lambda cls: cls.__name__)
def test_setting_an_option_on_the_wrong_level_is_an_error_not_a_new_attribute(cls):
    config = cls()
    with pytest.raises(AttributeError):
        config.resume = True
    config.train.resume = True
    assert flat_values(config)["resume"] is True


def test_an_unknown_flat_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="recipe.yaml: unknown key 'learning_rate'"):
        config_from_dict(DistillConfig, {"learning_rate": 1e-3}, source="recipe.yaml")


@pytest.mark.parametrize("kind, cls", [("sft", SFTConfig), ("distill", DistillConfig)])
def test_recipe_kinds_see_the_options_flat_and_typed(kind, cls):
    parameters = KINDS[kind].parameters()
    assert set(parameters) == set(flat_names(cls)) - {"out", "overwrite", "resume"}
    assert (parameters["lr"], parameters["batch_size"], parameters["packing"]) == (float, int, bool)
    assert parameters["val_data"] == str | None


LOOP_KEYS = ["epochs", "batch_size", "grad_accum", "lr", "warmup_ratio", "warmup_steps", "schedule", "weight_decay",
             "max_grad_norm", "max_length", "seed", "precision", "packing", "eval_every", "save_every", "keep_last",
             "patience", "max_steps"]
DATA_KEYS = ["data", "val_data", "val_split", "truncation"]


@pytest.mark.parametrize("cls, inputs, own_keys", [
    (SFTConfig, {"model": "m"}, ["model", *DATA_KEYS, "lora_rank", "lora_alpha", "lora_targets", "lora_dropout"]),
    (DistillConfig, {"teacher": "t", "student": "s"},
     ["teacher", "student", *DATA_KEYS, "loss", "beta", "temperature", "alpha", "teacher_top_k", "teacher_dtype",
      "teacher_cache", "on_policy", "sample_temperature", "max_new_tokens"]),
], ids=["sft", "distill"])
def test_run_identity_keeps_the_keys_and_order_of_run_files_written_before_composition(cls, inputs, own_keys):
    """run.json files written when the configs inherited TrainingConfig: the loop's keys first,
    then the engine's, without the volatile ones (out, resume, overwrite, progress, ...)."""
    identity = config_from_dict(cls, {**inputs, "data": "d", "out": "o", "lr": 1e-3}).run_identity()
    assert list(identity) == LOOP_KEYS + own_keys
    assert (identity["lr"], identity["data"], identity["val_split"]) == (1e-3, "d", 0.1)
    sharded = config_from_dict(cls, {**inputs, "data": "d", "out": "o", "fsdp": True}).run_identity()
    assert list(sharded) == LOOP_KEYS[:13] + ["fsdp"] + LOOP_KEYS[13:] + own_keys  # after packing, only when on
