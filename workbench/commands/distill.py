"""`workbench student init` (cut a student from a teacher) and `workbench distill`."""

from __future__ import annotations

import click

from workbench.commands.config_options import config_from_cli, config_options
from workbench.console import log
from workbench.distill.config import DistillConfig


@click.group("student")
def student() -> None:
    """Make student checkpoints for distillation."""


@student.command("init")
@click.argument("teacher", type=click.Path(path_type=str))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--num-layers", type=int, default=None,
              help="Keep N decoder layers spread evenly over the teacher's (first and last kept).")
@click.option("--layers", default=None, help="Keep exactly these teacher layers, e.g. 0,3,6.")
@click.option("--tokenizer", "tokenizer_dir", default=None, type=click.Path(path_type=str),
              help="Give the student this tokenizer (a directory); its embedding rows are made from the "
                   "teacher's rows of each token's spelling (for --cross-tokenizer distillation).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def student_init(teacher: str, out_dir: str, num_layers: int | None, layers: str | None,
                 overwrite: bool, tokenizer_dir: str | None) -> None:
    """Write a student to OUT_DIR from TEACHER's embeddings, final norm, lm_head and some of its
    decoder layers, with the teacher's tokenizer and an adjusted config."""
    from workbench.distill.student import init_student, parse_layer_list

    chosen = parse_layer_list(layers) if layers is not None else None
    ckpt = init_student(teacher, out_dir, num_layers=num_layers, layers=chosen, overwrite=overwrite,
                        tokenizer=tokenizer_dir)
    metrics = ckpt.lineage["metrics"]
    if tokenizer_dir:
        tokens = metrics["tokens"]
        click.echo(f"tokenizer {tokenizer_dir}: {metrics['vocab']:,} tokens, {tokens['exact']:,} mapped exactly to a "
                   f"teacher token, {tokens['decomposed']:,} from the mean of their teacher tokens, "
                   f"{tokens['fallback']:,} from the mean of all")
    click.echo(f"wrote {ckpt.path}: layers {ckpt.lineage['parameters']['layers']}, "
               f"{metrics['parameters']:,} parameters ({metrics['parameters_vs_teacher']:.1%} of the "
               f"teacher's {metrics['teacher_parameters']:,})")


@click.group("distill", invoke_without_command=True)
@config_options(DistillConfig)
@click.pass_context
def distill(ctx: click.Context, config_file: str | None, **given) -> None:
    """Distill a teacher into a student on chat data; OUT becomes the distilled student.

    Validation reports the KD loss, the student's cross-entropy and its top-1 agreement with the
    teacher. Re-running the same command resumes. Data-parallel (--fsdp: student and teacher sharded):
    torchrun --nproc_per_node=N -m workbench distill ... [--fsdp]
    """
    if ctx.invoked_subcommand is not None:
        return
    from workbench import distill as engine

    config = config_from_cli(DistillConfig, config_file, given)
    checkpoint = engine.run(config)
    metrics = (checkpoint.lineage or {}).get("metrics", {})
    shown = ("train_loss", "valid_kd_loss", "valid_student_ce", "valid_teacher_agreement")
    summary = ", ".join(f"{key} {metrics[key]:.4f}" for key in shown if key in metrics)
    log(f"wrote {checkpoint.path}" + (f" ({summary})" if summary else ""))


@distill.command("cache-teacher")
@click.option("--teacher", required=True, help="Teacher checkpoint.")
@click.option("--data", required=True, help="The chat JSONL you will distill on.")
@click.option("--out", required=True, help="Cache directory to write.")
@click.option("--top-k", type=int, default=64, show_default=True, help="Token log-probs kept per position.")
@click.option("--val-data", default=None, help="Validation JSONL, as you will pass to distill.")
@click.option("--val-split", type=float, default=0.1, show_default=True, help="As for distill.")
@click.option("--max-length", type=int, default=1024, show_default=True, help="As for distill.")
@click.option("--truncation", type=click.Choice(["truncate", "drop"]), default="truncate", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="As for distill (decides the split).")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Teacher temperature; distill must use the same.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Stored log-prob dtype.")
@click.option("--teacher-dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None)
@click.option("--teacher-device", default=None, help="Device of the whole teacher [default: cpu].")
@click.option("--device-map", default=None,
              help="Spread a teacher that fits no single device: auto (every GPU, then CPU, then disk) or "
                   "a list such as cuda:0,cuda:1 or cpu,disk (accelerate's big-model placement).")
@click.option("--max-memory", default=None, help="With --device-map: memory per device, e.g. cuda:0=20GiB,cpu=8GiB.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per teacher forward pass.")
@click.option("--cross-tokenizer", default=None,
              help="uld | align: cache for a student with another tokenizer (needs --student).")
@click.option("--student", default=None, help="With --cross-tokenizer: the student checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def cache_teacher(cross_tokenizer: str | None, student: str | None, **options) -> None:
    """Run the teacher once over the data and store, for every supervised token, its top-k token
    ids and log-probs (plus the remaining mass); `workbench distill --teacher-cache OUT` then
    trains students without loading the teacher. With --cross-tokenizer the rows are the
    teacher's at the targets paired with the student's (for that student's tokenizer and mode)."""
    from workbench.distill.cache import build_teacher_cache
    from workbench.errors import ConfigError

    if (cross_tokenizer is None) != (student is None):
        raise ConfigError("--cross-tokenizer and --student go together (a cache for a student with another tokenizer)")
    if cross_tokenizer:
        from workbench.distill.cross_tokenizer.cache import build_cross_teacher_cache

        manifest = build_cross_teacher_cache(student=student, mode=cross_tokenizer, **options)
    else:
        manifest = build_teacher_cache(**options)
    click.echo(f"wrote {options['out']}: {manifest['tokens']:,} tokens from {manifest['examples']} examples, "
               f"top-{manifest['top_k']}, {manifest['bytes_per_token']} bytes/token")
