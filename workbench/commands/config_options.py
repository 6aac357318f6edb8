"""Command-line options generated from an engine's config dataclass, plus `--config FILE.yaml`.

Every field becomes an option of the same name (dashes for underscores). Options default to
None so that a value given on the command line wins over the YAML file, which wins over the
dataclass default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from workbench.errors import ConfigError

CLICK_TYPES = {"int": int, "float": float}


def config_options(cls, help_texts: dict[str, str]):
    """Decorator adding one option per field of ``cls`` and a --config option."""

    inherited = len(dataclasses.fields(cls.__mro__[1])) if dataclasses.is_dataclass(cls.__mro__[1]) else 0
    fields = dataclasses.fields(cls)
    ordered = fields[inherited:] + fields[:inherited]  # the engine's own options first

    def decorate(func):
        for field in reversed(ordered):
            flag = "--" + field.name.replace("_", "-")
            text = help_texts.get(field.name, "")
            if field.default not in (None, "", False):
                text = f"{text} [default: {field.default}]".strip()
            if field.type == "bool":
                func = click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=text)(func)
            else:
                func = click.option(flag, field.name, type=CLICK_TYPES.get(field.type, str), default=None,
                                    help=text)(func)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                            help="YAML file with any of these options (command-line values win).")(func)

    return decorate


def config_from_cli(cls, config_file: str | None, given: dict):
    """The config from the YAML file (if any) overlaid with the options given on the command line."""
    from workbench.training.config import config_from_dict

    values = {}
    if config_file:
        values = {key.replace("-", "_"): value for key, value in load_yaml(Path(config_file)).items()}
    values.update({key: value for key, value in given.items() if value is not None})
    config = config_from_dict(cls, values, source=config_file or "options")
    config.validate()
    return config


def load_yaml(path: Path) -> dict:
    from workbench.yaml_io import read_yaml

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value")
    return data
