"""`workbench merge`: mergekit YAML in, merged checkpoint out."""

from __future__ import annotations

import time

import click

from workbench.heavy_imports import paused_collector


@click.command("merge")
@click.argument("config", type=click.Path(dir_okay=False, path_type=str))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--backend", type=click.Choice(["auto", "native", "mergekit"]), default="auto", show_default=True,
              help="native: linear, slerp, ties, task_arithmetic (streaming, fast); mergekit: any "
                   "mergekit method; auto: native when it can.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def merge(config: str, out_dir: str, backend: str, overwrite: bool) -> None:
    """Merge the models named in CONFIG (mergekit's YAML schema) into OUT_DIR.

    Supports merge_method, models (path or path+lora), base_model, parameters (numbers,
    layer gradients, {filter, value} lists), dtype, out_dtype and tokenizer_source. Inputs
    are checked before any tensor is read; OUT_DIR appears only once complete, with the
    tokenizer, chat template, a README model card and workbench.json lineage.
    """
    with paused_collector():
        from workbench.merge import run

    start = time.perf_counter()
    ckpt = run(config, out_dir, backend=backend, overwrite=overwrite, progress=True)
    seconds = time.perf_counter() - start
    recorded = ckpt.lineage["parameters"]
    click.echo(f"merged {len(ckpt.tensors)} tensors ({ckpt.total_bytes / 1e6:,.1f} MB) in {seconds:.1f} s "
               f"with {recorded['method']} ({recorded['backend']} backend) -> {ckpt.path}")
