"""Every CLI command, one module per area; cli.py registers the list below."""

from workbench.commands.checkpoints import generate, import_group, inspect
from workbench.commands.data import data_group
from workbench.commands.distill import distill, student
from workbench.commands.evaluate import evaluate
from workbench.commands.merge import merge
from workbench.commands.merge_search import merge_search
from workbench.commands.recipe import run_recipe
from workbench.commands.serve import chat, serve
from workbench.commands.sft import sft

COMMANDS = [import_group, inspect, generate, data_group, sft, student, distill, merge, merge_search, run_recipe,
            evaluate, serve, chat]
