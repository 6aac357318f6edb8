"""Every CLI command, one module per area; cli.py registers the list below."""

from workbench.commands.checkpoints import generate, import_group, inspect
from workbench.commands.evaluate import evaluate
from workbench.commands.recipe import run_recipe

COMMANDS = [import_group, inspect, generate, run_recipe, evaluate]
