"""Talking to checkpoints: `serve` (an OpenAI-compatible server) and `chat` (in the terminal)."""

from __future__ import annotations

import click


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs --api-key (or --insecure).")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on (0: any free one).")
@click.option("--api-key", envvar="WORKBENCH_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' on every endpoint but /health [env: WORKBENCH_API_KEY].")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--max-tokens", type=int, default=1024, show_default=True,
              help="Most tokens one answer may ask for; more is refused.")
@click.option("--max-concurrent", type=int, default=16, show_default=True,
              help="Answers one model generates at once (one batch).")
@click.option("--max-queue", type=int, default=64, show_default=True,
              help="Requests admitted beyond --max-concurrent; more get 429.")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True,
              help="Largest request body; more gets 413.")
@click.option("--max-loaded", type=int, default=4, show_default=True,
              help="Models held in memory at once; the least recently used idle one is unloaded.")
@click.option("--idle-unload", type=float, default=300.0, show_default=True,
              help="Seconds after which an idle model is unloaded.")
@click.option("--shutdown-timeout", type=float, default=30.0, show_default=True,
              help="On SIGTERM/SIGINT, seconds to let answers in flight finish before cancelling them.")
def serve(paths: tuple[str, ...], host: str, port: int, api_key: str | None, insecure: bool, max_tokens: int,
          max_concurrent: int, max_queue: int, max_body_bytes: int, max_loaded: int, idle_unload: float,
          shutdown_timeout: float) -> None:
    """Serve checkpoints over OpenAI's API (/v1/chat/completions, /v1/completions, /v1/models).

    Each PATH is a checkpoint (served under its directory name) or a recipe run directory
    runs/NAME/ (each finished step's checkpoint served under its step id). Models load on
    first use. Point any OpenAI client at http://HOST:PORT/v1.
    """
    from workbench.errors import ConfigError
    from workbench.serve.app import Limits
    from workbench.serve.server import ServeOptions
    from workbench.serve.server import serve as run_server

    for name, value in (("--max-tokens", max_tokens), ("--max-concurrent", max_concurrent),
                        ("--max-body-bytes", max_body_bytes), ("--max-loaded", max_loaded)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if max_queue < 0 or idle_unload <= 0 or shutdown_timeout < 0:
        raise ConfigError("--max-queue and --shutdown-timeout must be >= 0 and --idle-unload above 0")
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
