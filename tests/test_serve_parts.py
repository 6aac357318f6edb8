"""The pieces under `workbench serve`: sampling and stop strings, the batcher joining requests
mid-generation, the model pool's unloading, and which checkpoints a run directory serves."""

from __future__ import annotations

import threading

import pytest
import torch

from tests.serve_helpers import make_run_dir
from workbench.errors import ConfigError
from workbench.serve.batcher import Batcher, GenerationRequest
from workbench.serve.pool import ModelPool, PoolFull
from workbench.serve.sampling import Sampling, find_stop, next_token, releasable
from workbench.serve.sources import resolve


def test_releasable_holds_back_a_possible_stop_string_and_half_characters():
    assert releasable("hello wor", ("world",)) == "hello "
    assert releasable("hello wx", ("world",)) == "hello wx"
    assert releasable("caf\ufffd", ()) == "caf"
    assert find_stop("a END b STOP", ("STOP", "END")) == 2
    assert find_stop("nothing", ("STOP",)) is None


def test_top_p_keeps_only_the_nucleus_and_seeds_repeat():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    nucleus = Sampling(temperature=1.0, top_p=0.7, seed=0)
    generator = nucleus.generator()
    drawn = {next_token(logits, nucleus, generator) for _ in range(300)}
    assert drawn == {0, 1}
    a, b = Sampling(1.0, 1.0, 5), Sampling(1.0, 1.0, 5)
    ga, gb = a.generator(), b.generator()
    assert [next_token(logits, a, ga) for _ in range(20)] == [next_token(logits, b, gb) for _ in range(20)]
    assert next_token(logits, Sampling(0.0), None) == 0


PROMPTS = ["what is two plus two?", "capital of france", "hello", "reverse the word stone please, now",
           "the quick brown fox"]


def ask_all(batcher, tokenizer, prompts, max_new_tokens, join_after_first=False):
    """Submit the prompts (the rest only once the first has produced text, when asked) and
    return their answers in order."""
    from workbench.modeling import build_prompt_ids

    answers = [None] * len(prompts)
    done = [threading.Event() for _ in prompts]
    started = threading.Event()

    def request(i):
        def finish(answer):
            answers[i] = answer
            done[i].set()
        ids = build_prompt_ids(tokenizer, prompts[i])[0].tolist()
        return GenerationRequest(ids, max_new_tokens, Sampling(0.0), lambda _: started.set(), finish)

    batcher.submit(request(0))
    if join_after_first:
        assert started.wait(60)
    for i in range(1, len(prompts)):
        batcher.submit(request(i))
    for event in done:
        assert event.wait(120)
    return answers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_requests_joining_a_running_batch_get_their_solo_greedy_answers(tiny_llama, dtype):
    from workbench.modeling import generate_text
    from workbench.modeling import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_llama, dtype=dtype), load_tokenizer(tiny_llama)
    expected = [generate_text(model, tokenizer, p, max_new_tokens=30) for p in PROMPTS]
    batcher = Batcher(model, tokenizer, max_rows=8)
    try:
        answers = ask_all(batcher, tokenizer, PROMPTS, 30, join_after_first=True)
    finally:
        batcher.stop()
    assert [a.text.strip() for a in answers] == expected
    assert [a.finish_reason for a in answers] == ["length"] * len(PROMPTS)


def test_a_full_batch_makes_the_others_wait_and_all_finish(tiny_qwen2):
    from workbench.modeling import generate_text
    from workbench.modeling import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_qwen2), load_tokenizer(tiny_qwen2)
    batcher = Batcher(model, tokenizer, max_rows=2)
    try:
        answers = ask_all(batcher, tokenizer, PROMPTS, 10)
    finally:
        batcher.stop()
    assert [a.text.strip() for a in answers] == [generate_text(model, tokenizer, p, max_new_tokens=10)
                                                 for p in PROMPTS]


def test_a_run_directory_serves_its_finished_model_steps_by_id(tmp_path, tiny_llama):
    run_dir = make_run_dir(tmp_path)
    served = resolve([run_dir, tiny_llama])
    assert list(served.models) == ["expert-a", "ties", "llama"]
    assert served.models["ties"].path == run_dir / "ties"
    assert served.skipped == [f"{run_dir}: step 'report' (eval): {run_dir / 'report'}: no config.json, so this "
                              "is not a Hugging Face checkpoint directory"]
    with pytest.raises(ConfigError, match="two models named 'llama'"):
        resolve([tiny_llama, tiny_llama])


def test_pool_unloads_the_least_recently_used_idle_model_to_make_room(tmp_path):
    run_dir = make_run_dir(tmp_path)
    served = resolve([run_dir])
    pool = ModelPool(served.models, max_loaded=1, idle_seconds=3600)
    try:
        pool.get("expert-a")
        pool.get("ties")
        assert pool.loaded_names == ["ties"]
    finally:
        pool.close()
    assert pool.loaded_names == []


def test_pool_unloads_idle_models_when_memory_is_short_and_refuses_when_all_are_busy(tmp_path):
    run_dir = make_run_dir(tmp_path)
    served = resolve([run_dir])
    memory = {"free": 10**12}
    pool = ModelPool(served.models, max_loaded=4, idle_seconds=3600, available_memory=lambda: memory["free"])
    try:
        first = pool.get("expert-a")
        memory["free"] = 0
        pool.get("ties")
        assert pool.loaded_names == ["ties"]
        busy = pool.get("ties")
        busy.batcher._waiting.append(object())  # looks busy: never unloaded under it
        with pytest.raises(PoolFull):
            pool.get("expert-a")
        busy.batcher._waiting.clear()
        assert first is not pool.get("expert-a")
    finally:
        pool.close()


def test_pool_unloads_models_idle_for_too_long(tmp_path):
    run_dir = make_run_dir(tmp_path)
    pool = ModelPool(resolve([run_dir]).models, idle_seconds=0.2)
    try:
        pool.get("ties")
        for _ in range(100):
            if not pool.loaded_names:
                break
            threading.Event().wait(0.1)
        assert pool.loaded_names == []
    finally:
        pool.close()


def test_a_run_directory_without_a_finished_model_is_refused(tmp_path):
    from workbench.recipe.state import StepRecord, write_record

    run_dir = tmp_path / "broken"
    write_record(run_dir, StepRecord("expert", "sft", "fp", {}, "failed", error="bad data"))
    served_error = pytest.raises(ConfigError, match="no finished step of this run has a checkpoint to serve")
    with served_error:
        resolve([run_dir])


def test_cancelled_and_shut_down_requests_leave_the_batch_early(tiny_llama):
    from workbench.modeling import build_prompt_ids
    from workbench.modeling import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_llama), load_tokenizer(tiny_llama)
    batcher = Batcher(model, tokenizer, max_rows=4)
    answers, done, first_text = {}, {}, {}
    for key in ("disconnected", "in flight at shutdown"):
        done[key], first_text[key] = threading.Event(), threading.Event()
        request = GenerationRequest(build_prompt_ids(tokenizer, PROMPTS[0])[0].tolist(), 200, Sampling(0.0),
                                    on_text=lambda _, k=key: first_text[k].set(),
                                    on_done=lambda answer, k=key: (answers.update({k: answer}), done[k].set()))
        batcher.submit(request)
        assert first_text[key].wait(60)
        if key == "disconnected":
            request.cancel()
            assert done[key].wait(60)
    batcher.stop()
    assert done["in flight at shutdown"].is_set()
    for answer in answers.values():
        assert answer.finish_reason == "cancelled"
        assert 0 < answer.completion_tokens < 200
