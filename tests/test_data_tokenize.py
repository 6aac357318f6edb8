"""Loss masks from the chat template, checked against hand-written expectations per template."""

import pytest

from tests.cli_helpers import REPO_ROOT
from tests.tiny_models import make_tokenizer
from workbench.data import IGNORE_INDEX, Conversation, Message, tokenize_conversation
from workbench.data.tokenize import truncate_example
from workbench.errors import DataError

SMOLLM = REPO_ROOT / "models/smollm2-135m-instruct"
# What each template closes an assistant turn with (for qwen-base, not its EOS `<|endoftext|>`).
END_OF_TURN = {"chatml": "<|im_end|>", "zephyr": "</s>", "qwen-base": "<|im_end|>", "smollm": "<|im_end|>"}


@pytest.fixture(scope="module", params=["chatml", "zephyr", "qwen-base", "smollm"])
def template_tokenizer(request):
    if request.param == "smollm":
        from workbench.modeling import load_tokenizer

        assert SMOLLM.is_dir(), f"{SMOLLM} is absent: run scripts/get-smollm2 (scripts/test does)"
        return request.param, load_tokenizer(SMOLLM)
    return request.param, make_tokenizer(request.param)


def conversation(first_weight=1, second_weight=1):
    return Conversation((
        Message("system", "you are a helpful assistant"),
        Message("user", "what is two plus two?"),
        Message("assistant", "four.", first_weight),
        Message("user", "reverse the word: stone"),
        Message("assistant", "enots", second_weight),
    ), "data.jsonl:7")


def supervised_spans(tokenizer, example):
    """Decoded runs of consecutive supervised tokens."""
    spans, run = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


def test_mask_covers_each_assistant_turn_and_its_end_of_turn_token(template_tokenizer):
    name, tokenizer = template_tokenizer
    example = tokenize_conversation(tokenizer, conversation())
    assert supervised_spans(tokenizer, example) == ["four." + END_OF_TURN[name], "enots" + END_OF_TURN[name]]
    text = tokenizer.apply_chat_template(conversation().as_dicts(), tokenize=False)
    assert example.input_ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert example.source == "data.jsonl:7"


def test_weight_zero_turns_stay_out_of_the_loss(template_tokenizer):
    name, tokenizer = template_tokenizer
    example = tokenize_conversation(tokenizer, conversation(first_weight=0))
    assert supervised_spans(tokenizer, example) == ["enots" + END_OF_TURN[name]]
    with pytest.raises(DataError, match=r"^data.jsonl:7: no assistant token to learn from"):
        tokenize_conversation(tokenizer, conversation(first_weight=0, second_weight=0))


def test_turns_end_at_the_templates_end_of_turn_token_when_eos_differs():
    """Qwen base checkpoints: EOS `<|endoftext|>`, turns closed by `<|im_end|>\n`. The newline
    after `<|im_end|>` belongs to no answer and stays out of the loss."""
    tokenizer = make_tokenizer("qwen-base")
    assert tokenizer.eos_token == "<|endoftext|>"
    example = tokenize_conversation(tokenizer, conversation())
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ends = [i for i, token in enumerate(example.input_ids) if token == im_end]
    assert len(ends) == 5  # system, user, assistant, user, assistant
    for i in (ends[2], ends[4]):
        assert example.labels[i] == im_end
        assert tokenizer.decode([example.input_ids[i + 1]]) == "\n"
        assert example.labels[i + 1] == IGNORE_INDEX


def test_template_without_special_tokens_or_eos_in_the_turn():
    """A plain-text template: the diff alone decides where the answer starts and ends."""
    tokenizer = make_tokenizer("chatml")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    example = tokenize_conversation(tokenizer, conversation())
    spans = supervised_spans(tokenizer, example)
    # The generation prompt ends in a space that the answer's first token absorbs, so the diff
    # starts at that token: the answer and its newline are supervised, the role names are not.
    assert [s.strip() for s in spans] == ["four.", "enots"]
    assert all(s.endswith("\n") for s in spans)


def test_truncation_keeps_the_start_and_refuses_to_leave_nothing_to_learn():
    tokenizer = make_tokenizer("chatml")
    full = tokenize_conversation(tokenizer, conversation())
    answer_start = full.labels.index(next(label for label in full.labels if label != IGNORE_INDEX))
    cut = tokenize_conversation(tokenizer, conversation(), max_length=answer_start + 1)
    assert cut.input_ids == full.input_ids[:answer_start + 1]
    assert cut.num_supervised == 1
    with pytest.raises(DataError, match=r"data.jsonl:7: .*truncating to the max length 5"):
        truncate_example(full, 5)


def test_missing_or_refusing_chat_template_is_a_data_error():
    tokenizer = make_tokenizer("chatml")
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}"
                               "{{ raise_exception('system messages are not supported') }}{% endif %}")
    with pytest.raises(DataError, match="data.jsonl:7: the chat template refused .*system messages"):
        tokenize_conversation(tokenizer, conversation())
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        tokenize_conversation(tokenizer, conversation())
