"""Rank-aware output: under torchrun every process runs the same command, and only rank 0
(RANK unset or "0") speaks, so a line appears once however many processes train."""

from __future__ import annotations

import os

import click


def rank() -> int:
    """This process's rank under torchrun (0 without it)."""
    return int(os.environ.get("RANK", "0"))


def is_rank_zero() -> bool:
    return rank() == 0


def log(message: str, *, err: bool = False) -> None:
    """Print ``message`` (to stderr with ``err``) on rank 0 only."""
    if is_rank_zero():
        click.echo(message, err=err)
