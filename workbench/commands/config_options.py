"""Command-line options generated from an engine's config dataclass, plus `--config FILE.yaml`.

Every option of the config (``workbench.training.fields.flat_fields``: its own fields and
those of its parts) becomes an option of the same name (dashes for underscores), with the
help text its field carries. Options default to None so that a value given on the command
line wins over the YAML file, which wins over the dataclass default.
"""

from __future__ import annotations

from pathlib import Path

import click

from workbench.errors import ConfigError
from workbench.training.fields import config_from_dict, flat_fields

CLICK_TYPES = {int: int, float: float}


def config_options(cls):
    """Decorator adding one option per option of ``cls`` and a --config option."""

    def decorate(func):
        for flat in reversed(flat_fields(cls)):
            flag = "--" + flat.name.replace("_", "-")
            text = flat.help
            if flat.default not in (None, "", False):
                text = f"{text} [default: {flat.default}]".strip()
            if flat.type is bool:
                func = click.option(f"{flag}/--no-{flag[2:]}", flat.name, default=None, help=text)(func)
            else:
                func = click.option(flag, flat.name, type=CLICK_TYPES.get(flat.type, str), default=None,
                                    help=text)(func)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                            help="YAML file with any of these options (command-line values win).")(func)

    return decorate


def config_from_cli(cls, config_file: str | None, given: dict):
    """The config from the YAML file (if any) overlaid with the options given on the command line."""
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
