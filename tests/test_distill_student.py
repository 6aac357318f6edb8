"""Students cut from a teacher: the right layers, a loadable model, clear errors."""

import pytest
import torch

from tests.cli_helpers import run_workbench
from workbench.checkpoint import Checkpoint
from workbench.distill.student import init_student, parse_layer_list, spread_layers
from workbench.errors import ConfigError
from workbench.modeling import load_model, load_tokenizer


def test_spread_layers_keeps_first_and_last_evenly():
    assert spread_layers(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert spread_layers(4, 2) == [0, 3]
    assert spread_layers(5, 3) == [0, 2, 4]
    assert spread_layers(4, 1) == [0]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_student_has_the_chosen_teacher_layers_and_generates(arch, tmp_path):
    from tests.tiny_models import make_checkpoint

    teacher_dir = make_checkpoint(tmp_path / "teacher", arch=arch, layers=4,
                                  template="zephyr" if arch == "qwen2" else "chatml")
    student = init_student(teacher_dir, tmp_path / "student", layers=[0, 2, 3])
    teacher = Checkpoint(teacher_dir)
    prefix = "transformer.h" if arch == "gpt2" else "model.layers"
    for new, old in enumerate([0, 2, 3]):
        for name in teacher.names():
            if name.startswith(f"{prefix}.{old}."):
                student_name = f"{prefix}.{new}." + name[len(f"{prefix}.{old}."):]
                assert torch.equal(student.read(student_name), teacher.read(name)), student_name
    assert not any(n.startswith(f"{prefix}.3.") for n in student.names())
    assert student.num_layers == 3
    assert student.num_parameters < teacher.num_parameters

    # transformers loads it with every weight from the file, and the layers compute as the teacher's
    model, teacher_model = load_model(student.path), load_model(teacher_dir)
    ids = torch.tensor([[5, 17, 42, 9]])
    with torch.no_grad():
        embed = model.get_input_embeddings()(ids)
        assert torch.equal(embed, teacher_model.get_input_embeddings()(ids))
        assert torch.equal(model.get_output_embeddings().weight, teacher_model.get_output_embeddings().weight)
    tokenizer = load_tokenizer(student.path)
    assert tokenizer.chat_template == load_tokenizer(teacher_dir).chat_template
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_student_matches_the_same_layers_run_inside_the_teacher(tiny_llama, tmp_path):
    """A student with every layer but the last computes what the teacher computes when its
    last layer is skipped: the config, renaming and per-layer settings are consistent."""
    teacher = load_model(tiny_llama)
    student = load_model(init_student(tiny_llama, tmp_path / "s", layers=[0]).path)
    ids = torch.tensor([[3, 8, 1, 30, 2]])
    with torch.no_grad():
        teacher.model.layers = teacher.model.layers[:1]
        teacher.config.num_hidden_layers = 1
        torch.testing.assert_close(student(ids).logits, teacher(ids).logits)


def test_lineage_and_inspect_show_the_size_reduction(tiny_llama, tmp_path):
    result = run_workbench("student", "init", tiny_llama, tmp_path / "s", "--num-layers", "1")
    assert result.returncode == 0, result.stderr
    assert "of the teacher's" in result.stdout
    shown = run_workbench("inspect", tmp_path / "s")
    assert "parameters_vs_teacher" in shown.stdout and "student-init" in shown.stdout
    lineage = Checkpoint(tmp_path / "s").lineage
    assert lineage["inputs"]["teacher"]["fingerprint"] == Checkpoint(tiny_llama).fingerprint()
    assert lineage["parameters"]["layers"] == [0]


@pytest.mark.parametrize("args, message", [
    (["--num-layers", "0"], "between 1 and 1"),
    (["--layers", "0,0"], "layer 0 is listed more than once"),
])
def test_bad_layer_choices_exit_2_and_write_nothing(tiny_llama, tmp_path, args, message):
    result = run_workbench("student", "init", tiny_llama, tmp_path / "s", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_layers=2), "between 1 and 1"),
    (dict(layers=[0, 2]), "index 2 is out of range"),
    (dict(layers=[-1]), "index -1 is out of range"),
    (dict(layers=[0, 1]), "a student needs fewer"),
    (dict(layers=[]), "is empty"),
    (dict(), "exactly one of"),
    (dict(num_layers=1, layers=[0]), "exactly one of"),
])
def test_bad_layer_choices_raise_before_writing(tiny_llama, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        init_student(tiny_llama, tmp_path / "s", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_parse_layer_list_names_the_option():
    assert parse_layer_list("0, 3,6") == [0, 3, 6]
    with pytest.raises(ConfigError, match="--layers must be comma-separated integers"):
        parse_layer_list("0,x")
