"""The `workbench` command line: a click group whose commands live in workbench/commands/.

Commands stay thin: parse options, call one engine function, print, return. A
``WorkbenchError`` becomes one line on stderr and exit code 2; ``--debug`` shows the traceback.
Under torchrun the line is printed by rank 0, and every failing rank records it in its torchrun
reply file (``console.record_error``).
click's own errors (a missing option, a bad choice, an unknown command) are said the same way,
one ``error:`` line naming the option, rather than click's usage block; a group called with no
command still prints its help.
Heavy libraries (torch, transformers) are imported inside commands so `--help` is instant.
"""

from __future__ import annotations

import os
import sys

import click

from workbench import __version__
from workbench.commands import COMMANDS
from workbench.console import is_rank_zero, rank, record_error
from workbench.errors import ConfigError, WorkbenchError


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
    code = run_cli(args)
    if _in_process_group():
        _leave_process_group_and_exit(code)
    if code:
        sys.exit(code)


def run_cli(args: list[str]) -> int:
    """Run one command; the exit code (0, 2 for a WorkbenchError, ...)."""
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="workbench", standalone_mode=False)
    except WorkbenchError as exc:
        if debug:
            raise
        record_error(str(exc))  # under torchrun: read back even when this rank is stopped before it prints
        if is_rank_zero():
            click.echo(f"error: {exc}", err=True)
        elif not isinstance(exc, ConfigError):  # bad input is checked alike on every rank: said once
            click.echo(f"error (rank {rank()}): {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        line = click_error_line(exc)
        record_error(line)
        click.echo(f"error: {line}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def _in_process_group() -> bool:
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _leave_process_group_and_exit(code: int) -> None:
    """Leave torchrun's process group and end the process without running interpreter teardown.

    gloo's background threads can still be alive when the interpreter destroys its static
    objects, and the process then aborts with "terminate called without an active exception"
    (SIGABRT, exit 134) after the work is done and written (an open PyTorch issue). Everything
    this process had to do is finished and flushed here, so it skips that teardown."""
    import torch.distributed as dist

    try:
        dist.destroy_process_group()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def click_error_line(exc: click.ClickException) -> str:
    """click's message on one line, with the command whose --help lists the options."""
    message = " ".join(exc.format_message().split()).removesuffix(".")
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message
