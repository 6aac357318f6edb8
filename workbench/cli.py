"""The `workbench` command line: a click group whose commands live in workbench/commands/.

Commands stay thin: parse options, call one engine function, print, return. A
``WorkbenchError`` becomes one line on stderr and exit code 2; ``--debug`` shows the traceback.
Heavy libraries (torch, transformers) are imported inside commands so `--help` is instant.
"""

from __future__ import annotations

import sys

import click

from workbench import __version__
from workbench.commands import COMMANDS
from workbench.errors import WorkbenchError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="workbench")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Post-training workbench: fine-tune (sft), distill and merge language models.

    Every command reads and writes Hugging Face-layout safetensors checkpoints.
    Start with `workbench inspect CKPT` and `workbench generate CKPT --prompt ...`.
    """
    ctx.obj = {"debug": debug}


for command in COMMANDS:
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="workbench", standalone_mode=False)
    except WorkbenchError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
