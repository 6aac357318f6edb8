"""Every CLI command, one module per area; cli.py registers the list below."""

from workbench.commands.checkpoints import generate, import_group, inspect
from workbench.commands.distill import student

COMMANDS = [import_group, inspect, generate, student]
