"""`student init --tokenizer`: a cut of the teacher that speaks another tokenizer, its embedding
rows made from the teacher's rows of each token's spelling."""

import pytest
import torch

from tests.cli_helpers import run_workbench
from tests.tiny_models import make_checkpoint, make_sentencepiece_tokenizer
from workbench.checkpoint import Checkpoint
from workbench.modeling import load_model, load_tokenizer


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("transplant")
    teacher = make_checkpoint(root / "teacher", layers=3, seed=1)
    tokenizer_dir = root / "sp-tokenizer"
    make_sentencepiece_tokenizer().save_pretrained(tokenizer_dir)
    result = run_workbench("student", "init", teacher, root / "student", "--num-layers", "2",
                           "--tokenizer", tokenizer_dir)
    return {"teacher": teacher, "student": root / "student", "tokenizer": tokenizer_dir, "result": result,
            "root": root}


def test_rows_come_from_the_same_spelling_or_the_mean_of_the_decomposition(made):
    assert made["result"].returncode == 0, made["result"].stderr
    teacher_tok, student_tok = load_tokenizer(made["teacher"]), load_tokenizer(made["student"])
    assert student_tok.get_vocab() == make_sentencepiece_tokenizer().get_vocab()
    teacher, student = Checkpoint(made["teacher"]), Checkpoint(made["student"])
    assert student.config["vocab_size"] == len(student_tok) and student.config["eos_token_id"] == student_tok.eos_token_id
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        t, s = teacher.read(name), student.read(name)
        assert s.shape == (len(student_tok), t.shape[1])
        row = lambda tok, token: tok.convert_tokens_to_ids(token)  # noqa: E731
        torch.testing.assert_close(s[row(student_tok, "▁two")], t[row(teacher_tok, "Ġtwo")], rtol=0, atol=0)
        torch.testing.assert_close(s[student_tok.eos_token_id], t[teacher_tok.eos_token_id], rtol=0, atol=0)
        emoji = row(student_tok, "▁\U0001F600")  # whole for the student, bytes for the teacher
        pieces = teacher_tok(" \U0001F600", add_special_tokens=False)["input_ids"]
        assert len(pieces) > 1
        torch.testing.assert_close(s[emoji], t[pieces].mean(dim=0))
    tokens = student.lineage["metrics"]["tokens"]
    assert sum(tokens.values()) == len(student_tok) and tokens["exact"] > 100 and tokens["decomposed"] > 0
    assert f"{tokens['exact']:,} mapped exactly" in made["result"].stdout
    model = load_model(made["student"])
    ids = student_tok("two plus two", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(student_tok))


def test_a_missing_tokenizer_directory_is_one_line_and_writes_nothing(made):
    out = made["root"] / "never"
    result = run_workbench("student", "init", made["teacher"], out, "--num-layers", "2",
                           "--tokenizer", made["root"] / "nope")
    assert result.returncode == 2 and result.stderr.strip().endswith("no tokenizer.json or tokenizer_config.json "
                                                                      "(expected a tokenizer directory)")
    assert not out.exists()
