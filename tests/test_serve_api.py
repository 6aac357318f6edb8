"""`workbench serve` answered through the real `openai` client: a recipe run's two models,
greedy answers equal to `workbench generate`, streaming, usage, stop, concurrency, errors."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.serve_helpers import Server, make_run_dir, raw_request

KEY = "test-key-123"
PROMPT = "what is two plus two?"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def server(run_dir):
    with Server(run_dir, "--max-tokens", "48", "--max-body-bytes", "4096", env={"WORKBENCH_API_KEY": KEY}) as srv:
        yield srv
    assert srv.process.returncode == 0, "".join(srv.lines)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)


@pytest.fixture(scope="module")
def expected(run_dir):
    """Greedy `workbench generate` answers (the function the command calls) of each step."""
    from workbench.modeling import generate_from_checkpoint

    return {name: generate_from_checkpoint(run_dir / name, PROMPT, max_new_tokens=12, temperature=0.0)
            for name in ("expert-a", "ties")}


def chat(client, model="expert-a", prompt=PROMPT, **kwargs):
    kwargs = {"max_tokens": 12, "temperature": 0, **kwargs}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **kwargs)


def test_models_lists_each_finished_step_of_the_run_under_its_id(client, server):
    assert sorted(m.id for m in client.models.list()) == ["expert-a", "ties"]
    assert any("not served: " in line and "step 'report' (eval)" in line for line in server.lines)


def test_greedy_answers_equal_generate_for_both_models_of_the_run(client, expected):
    answers = {name: chat(client, name).choices[0].message.content for name in expected}
    assert {name: text.strip() for name, text in answers.items()} == expected
    assert answers["expert-a"] != answers["ties"]


def test_streamed_answer_equals_the_whole_answer(client, expected):
    stream = chat(client, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.strip() == expected["expert-a"]
    assert text == chat(client).choices[0].message.content
    assert reasons == ["length"]
    assert chunks[-1].usage.completion_tokens == 12


def test_usage_counts_match_the_tokenizer(client, run_dir):
    from workbench.modeling import build_prompt_ids
    from workbench.modeling import load_tokenizer

    tokenizer = load_tokenizer(run_dir / "expert-a")
    answer = chat(client, max_tokens=7)
    assert answer.usage.prompt_tokens == build_prompt_ids(tokenizer, PROMPT).shape[1]
    assert answer.usage.completion_tokens == 7
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + 7
    assert answer.choices[0].finish_reason == "length"
    completion = client.completions.create(model="ties", prompt=PROMPT, max_tokens=5, temperature=0)
    assert completion.usage.prompt_tokens == len(tokenizer(PROMPT)["input_ids"])
    assert completion.usage.completion_tokens == 5


def test_stop_string_cuts_the_answer_whole_and_streamed(client):
    full = chat(client, max_tokens=24).choices[0].message.content
    start = next(i for i in range(3, len(full) - 2) if full[i:i + 2].isalnum())
    stop = full[start:start + 2]
    cut = chat(client, max_tokens=24, stop=[stop, "never-appears"])
    assert cut.choices[0].message.content == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, max_tokens=24, stop=stop, stream=True)
                       if c.choices)
    assert streamed == full[:full.index(stop)]


def test_seeded_sampling_repeats_and_differs_from_greedy(client):
    first = chat(client, temperature=1.5, seed=7).choices[0].message.content
    again = chat(client, temperature=1.5, seed=7).choices[0].message.content
    assert first == again
    assert first != chat(client).choices[0].message.content


def test_twenty_concurrent_requests_all_succeed_with_their_own_answers(server, expected):
    async def main():
        async_client = openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url, max_retries=0)
        names = ["expert-a", "ties"] * 10
        tasks = [async_client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": PROMPT}], max_tokens=12, temperature=0)
            for name in names]
        answers = await asyncio.gather(*tasks)
        await async_client.close()
        return names, answers

    names, answers = asyncio.run(main())
    assert [a.choices[0].message.content.strip() for a in answers] == [expected[n] for n in names]
    assert all(a.usage.completion_tokens == 12 for a in answers)


def post(server, path, body: bytes, key=KEY, content_type="application/json"):
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {key}"}
    return raw_request(server.base_url + path, body, headers)


@pytest.mark.parametrize("body, status, param", [
    ({"model": "expert-a"}, 400, "messages"),
    ({"model": "expert-a", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"model": "nobody", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"model": "expert-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400, "max_tokens"),
    ({"model": "expert-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 49}, 400, "max_tokens"),
    ({"model": "expert-a", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"model": "expert-a", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs"),
    ({"model": "expert-a", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature"),
    ({"model": "expert-a", "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_object"}}, 400, "response_format"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, expected, body, status, param):
    code, error = post(server, "/chat/completions", json.dumps(body).encode())
    assert code == status
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["param"] == param
    assert chat(client).choices[0].message.content.strip() == expected["expert-a"]


def test_sdk_raises_the_matching_errors(client):
    with pytest.raises(openai.NotFoundError):
        chat(client, model="nobody")
    with pytest.raises(openai.BadRequestError):
        chat(client, max_tokens=-1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="ties", messages=[{"role": "wizard", "content": "x"}])


def test_body_over_the_cap_gets_413(server, client, expected):
    body = json.dumps({"model": "expert-a", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    code, error = post(server, "/chat/completions", body)
    assert code == 413
    assert error["error"]["code"] == "request_too_large"
    assert chat(client).choices[0].message.content.strip() == expected["expert-a"]


def test_malformed_json_gets_400(server):
    code, error = post(server, "/chat/completions", b'{"model": "expert-a", "messages": [')
    assert code == 400
    assert "not valid JSON" in error["error"]["message"]


def test_wrong_or_missing_api_key_gets_401_on_every_endpoint_but_health(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="wrong", base_url=server.base_url, max_retries=0).models.list()
    code, error = post(server, "/chat/completions", b"{}", key="test-key-12")
    assert (code, error["error"]["code"]) == (401, "invalid_api_key")
    assert raw_request(server.base_url + "/models")[0] == 401
    code, health = raw_request(server.root + "/health")
    assert code == 200 and health["status"] == "ok"
