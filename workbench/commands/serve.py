"""Talking to checkpoints: `serve` (an OpenAI-compatible server) and `chat` (in the terminal)."""

from __future__ import annotations

import click

# The server's limits: option, the values it accepts (click refuses others in one line), default, help.
LIMITS = (
    ("--max-tokens", click.IntRange(min=1), 1024, "Most tokens one answer may ask for; more is refused."),
    ("--max-concurrent", click.IntRange(min=1), 16, "Answers one model generates at once (one batch)."),
    ("--max-queue", click.IntRange(min=0), 64, "Requests admitted beyond --max-concurrent; more get 429."),
    ("--max-body-bytes", click.IntRange(min=1), 1 << 20, "Largest request body; more gets 413."),
    ("--max-loaded", click.IntRange(min=1), 4,
     "Models held in memory at once; the least recently used idle one is unloaded."),
    ("--idle-unload", click.FloatRange(min=0, min_open=True), 300.0, "Seconds after which an idle model is unloaded."),
    ("--shutdown-timeout", click.FloatRange(min=0), 30.0,
     "On SIGTERM/SIGINT, seconds to let answers in flight finish before cancelling them."),
)


def limit_options(func):
    """Decorator adding the options of LIMITS, in their order."""
    for flag, values, default, text in reversed(LIMITS):
        func = click.option(flag, type=values, default=default, show_default=True, help=text)(func)
    return func


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --api-key (or --insecure).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on (0: any free one).")
@click.option("--api-key", envvar="WORKBENCH_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health [env: WORKBENCH_API_KEY].")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@limit_options
def serve(paths: tuple[str, ...], host: str, port: int, api_key: str | None, insecure: bool, max_tokens: int,
          max_concurrent: int, max_queue: int, max_body_bytes: int, max_loaded: int, idle_unload: float,
          shutdown_timeout: float) -> None:
    """Serve checkpoints over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models).

    Each PATH is a checkpoint (served under its directory name) or a recipe run directory
    runs/NAME/ (each finished step's checkpoint served under its step id). Models load on
    first use. Point any OpenAI client at http://HOST:PORT/v1.
    """
    from workbench.serve.app import Limits
    from workbench.serve.server import ServeOptions
    from workbench.serve.server import serve as run_server

    limits = Limits(max_tokens=max_tokens, max_body_bytes=max_body_bytes, max_running=max_concurrent,
                    max_waiting=max_queue)
    options = ServeOptions(host=host, port=port, api_key=api_key, insecure=insecure, limits=limits,
                           max_loaded=max_loaded, idle_seconds=idle_unload, shutdown_seconds=shutdown_timeout)
    run_server(list(paths), options, log=lambda line: click.echo(line, err=True))


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--system", default=None, help="System message to start with (/system TEXT changes it).")
@click.option("--max-new-tokens", type=int, default=512, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 is greedy; above 0 samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling (turn N uses SEED+N).")
def chat(checkpoint: str, system: str | None, max_new_tokens: int, temperature: float, seed: int) -> None:
    """Chat with CHECKPOINT in the terminal, answers streamed as they are generated.

    Commands: /reset forgets the conversation, /system TEXT sets the system message and
    resets, /exit (or Ctrl-D) quits; Ctrl-C stops an answer.
    """
    from workbench.serve.terminal_chat import TerminalChat

    TerminalChat(checkpoint, system=system, max_new_tokens=max_new_tokens, temperature=temperature,
                 seed=seed).run()
