"""On-policy distillation: the student's own answers replace the reference answers, the run
resumes exactly, bad settings are refused."""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from tests.chat_runs import interrupted_copy
from tests.cli_helpers import run_workbench
from tests.test_distill_engine import config, setup  # noqa: F401 (setup is a fixture)
from workbench.data import IGNORE_INDEX, pad_collate, prepare_datasets
from workbench.distill import run
from workbench.distill.on_policy import OnPolicyObjective, answer_start
from workbench.errors import ConfigError
from workbench.modeling import load_model, load_tokenizer, stop_token_ids


def test_answer_start_is_the_start_of_the_last_supervised_span():
    labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7, 8, 9, IGNORE_INDEX, IGNORE_INDEX])
    assert answer_start(labels) == 5
    assert answer_start(torch.tensor([IGNORE_INDEX, 3, 4])) == 1


def test_student_answers_keep_each_prompt_and_equal_unbatched_greedy_generation(setup):
    tokenizer = load_tokenizer(setup["student"])
    model = load_model(setup["student"]).train()
    examples, _, _ = prepare_datasets(setup["data"], tokenizer, 64, val_split=0.0)
    batch = pad_collate(examples[:5], pad_id=tokenizer.pad_token_id)
    eos = stop_token_ids(model, tokenizer)
    on_policy = OnPolicyObjective(None, fraction=1.0, max_new_tokens=6, temperature=0.0, max_length=64,
                                  pad_id=tokenizer.pad_token_id, eos_ids=eos)

    sampled = on_policy.with_student_answers(model, batch)

    assert model.training, "generation must leave the student in the mode it found it in"
    for row, example in enumerate(examples[:5]):
        prompt = example.input_ids[:answer_start(torch.tensor(example.labels))]
        length = int(sampled["attention_mask"][row].sum())
        ids, labels = sampled["input_ids"][row, :length].tolist(), sampled["labels"][row, :length].tolist()
        assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [IGNORE_INDEX] * len(prompt)
        answer = ids[len(prompt):]
        assert labels[len(prompt):] == answer and 1 <= len(answer) <= 6
        with torch.no_grad():
            alone = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                   eos_token_id=sorted(eos))[0, len(prompt):].tolist()
        expected = next((alone[:i + 1] for i, token in enumerate(alone) if token in eos), alone)
        assert answer == expected, f"row {row}: left-padded batch generation differs from the prompt alone"


def test_student_answers_never_exceed_max_length(setup):
    tokenizer = load_tokenizer(setup["student"])
    examples, _, _ = prepare_datasets(setup["data"], tokenizer, 64, val_split=0.0)
    batch = pad_collate(examples[:4], pad_id=tokenizer.pad_token_id)
    longest_prompt = max(answer_start(torch.tensor(e.labels)) for e in examples[:4])
    on_policy = OnPolicyObjective(None, fraction=1.0, max_new_tokens=50, temperature=1.0,
                                  max_length=longest_prompt + 2, pad_id=tokenizer.pad_token_id, eos_ids={-1})
    sampled = on_policy.with_student_answers(load_model(setup["student"]), batch)
    assert int(sampled["attention_mask"].sum(dim=1).max()) <= longest_prompt + 2


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_interrupted_on_policy_run_resumes_to_identical_weights(setup, tmp_path):
    settings = dict(on_policy=0.5, sample_temperature=1.0, max_new_tokens=8, max_steps=4, save_every=2, val_data=None,
                    val_split=0.0)
    straight = run(config(setup, tmp_path / "straight", **settings)).path
    interrupted = interrupted_copy(straight, tmp_path / "interrupted", "step-0000004")

    resumed = run(config(setup, interrupted, **settings)).path

    expected, got = final_weights(straight), final_weights(resumed)
    for name in expected:
        assert torch.equal(got[name], expected[name]), f"{name} differs after resuming at step 2"
    off_policy = run(config(setup, tmp_path / "off", **{**settings, "on_policy": 0.0})).path
    assert any(not torch.equal(final_weights(off_policy)[name], expected[name]) for name in expected), \
        "on-policy training must see other batches than the reference answers"


@pytest.mark.parametrize("overrides, message", [
    (dict(on_policy=1.5), "on_policy must be in"), (dict(on_policy=-0.1), "on_policy must be in"),
    (dict(sample_temperature=-1.0), "sample_temperature"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(on_policy=0.5, teacher_cache="somewhere"), "needs the teacher online"),
    (dict(on_policy=0.5, packing=True), "needs packing off"),
    (dict(on_policy=0.5, alpha=0.5), "use alpha 1 with on_policy"),
])
def test_bad_on_policy_settings_are_refused(setup, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(setup, tmp_path / "out", **overrides).validate()


def test_bad_on_policy_share_on_the_command_line_exits_2(setup, tmp_path):
    result = run_workbench("distill", "--teacher", setup["teacher"], "--student", setup["student"], "--data",
                           setup["data"], "--out", tmp_path / "out", "--on-policy", "2")
    assert result.returncode == 2 and "on_policy must be in [0, 1]" in result.stderr
    assert not (tmp_path / "out").exists()
