"""Start-up: check what to serve and where, bind the socket, run uvicorn until SIGTERM/SIGINT.

Everything that can be wrong with the command line is found before a model is loaded or a
request accepted, and reported as one line (exit 2): a path that is neither a checkpoint
nor a run directory, two models with one name, a port in use, a non-loopback address
without an API key.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.serve.app import Limits


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    insecure: bool = False
    limits: Limits = Limits()
    max_loaded: int = 4
    idle_seconds: float = 300.0
    shutdown_seconds: float = 30.0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(host: str, api_key: str | None, insecure: bool) -> None:
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key (or WORKBENCH_API_KEY) is empty")
    if not is_loopback(host) and api_key is None and not insecure:
        raise ConfigError(f"--host {host} accepts connections from other machines; give --api-key (or "
                          "WORKBENCH_API_KEY), or --insecure to serve without one")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or one line saying why not (port in use, unknown host)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = "already in use" if exc.errno == 98 else exc.strerror
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None


def serve(paths: list[str], options: ServeOptions, log=print) -> None:
    import uvicorn

    from workbench.serve.app import build_app
    from workbench.serve.pool import ModelPool
    from workbench.serve.sources import resolve

    if not 0 <= options.port <= 65535:
        raise ConfigError(f"--port must be from 0 to 65535, got {options.port}")
    check_exposure(options.host, options.api_key, options.insecure)
    served = resolve(paths)
    sock = bind(options.host, options.port)
    pool = ModelPool(served.models, max_rows=options.limits.max_running, max_loaded=options.max_loaded,
                     idle_seconds=options.idle_seconds)
    app = build_app(pool, options.limits, options.api_key)
    for line in served.skipped:
        log(f"not served: {line}")
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    log(f"serving {len(served.models)} model(s) on http://{url_host}:{port}/v1: {', '.join(served.models)}")
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=options.shutdown_seconds,
                            access_log=False)
    # uvicorn handles SIGTERM while it runs (stop accepting, let answers in flight finish up to
    # timeout_graceful_shutdown, cancel the rest), then re-sends it to the handler that was there
    # before: this one, so that a SIGTERM stop is an ordinary exit with status 0.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.close()
        sock.close()
    log("server stopped")
