"""`workbench student init` (cut a student from a teacher) and `workbench distill`."""

from __future__ import annotations

import click


@click.group("student")
def student() -> None:
    """Make student checkpoints for distillation."""


@student.command("init")
@click.argument("teacher", type=click.Path(path_type=str))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--num-layers", type=int, default=None,
              help="Keep N decoder layers spread evenly over the teacher's (first and last kept).")
@click.option("--layers", default=None, help="Keep exactly these teacher layers, e.g. 0,3,6.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
def student_init(teacher: str, out_dir: str, num_layers: int | None, layers: str | None,
                 overwrite: bool) -> None:
    """Write a student to OUT_DIR from TEACHER's embeddings, final norm, lm_head and some of its
    decoder layers, with the teacher's tokenizer and an adjusted config."""
    from workbench.distill.student import init_student, parse_layer_list

    chosen = parse_layer_list(layers) if layers is not None else None
    ckpt = init_student(teacher, out_dir, num_layers=num_layers, layers=chosen, overwrite=overwrite)
    metrics = ckpt.lineage["metrics"]
    click.echo(f"wrote {ckpt.path}: layers {ckpt.lineage['parameters']['layers']}, "
               f"{metrics['parameters']:,} parameters ({metrics['parameters_vs_teacher']:.1%} of the "
               f"teacher's {metrics['teacher_parameters']:,})")
