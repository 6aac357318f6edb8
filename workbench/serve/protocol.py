"""The OpenAI wire format: request validation, response bodies and error bodies.

Requests are checked by hand rather than by a schema library so every refusal is one
sentence naming the parameter, in OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}``. Parameters that would change the
answer and that this server cannot honour (``n`` > 1, tools, logprobs, penalties, ...) are
refused, never ignored; parameters that do not change the answer (``user``, ``metadata``,
...) are accepted and ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from workbench.serve.batcher import Answer
from workbench.serve.sampling import Sampling

ROLES = ("system", "developer", "user", "assistant")
MAX_STOPS = 4
# Parameter -> the values at which it changes nothing; any other value is refused.
UNSUPPORTED = {
    "tools": (None, []), "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
    "logprobs": (None, False, 0), "top_logprobs": (None, 0),
    "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
    "logit_bias": (None, {}), "best_of": (None, 1), "echo": (None, False), "suffix": (None, ""),
    "audio": (None,), "prediction": (None,), "modalities": (None, ["text"]),
    "response_format": (None, {"type": "text"}),
}


class APIError(Exception):
    """A request refused with an HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Request:
    """A validated chat or completion request."""

    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None  # None: as many as the cap and the context allow
    sampling: Sampling
    stops: tuple[str, ...]
    messages: list[dict] | None = None  # chat
    prompt: str | list[int] | None = None  # completion


def parse_chat(body: object, max_tokens_cap: int) -> Request:
    body = _object(body)
    request = _common(body, max_tokens_cap)
    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    request.messages = [_message(m, i) for i, m in enumerate(messages)]
    return request


def parse_completion(body: object, max_tokens_cap: int) -> Request:
    body = _object(body)
    request = _common(body, max_tokens_cap)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one prompt
    if isinstance(prompt, str) and prompt:
        request.prompt = prompt
    elif isinstance(prompt, list) and prompt and all(_is_int(t) and t >= 0 for t in prompt):
        request.prompt = list(prompt)
    else:
        raise APIError(400, "'prompt' must be a non-empty string or array of token ids (one prompt per "
                            "request)", param="prompt")
    return request


def _object(body: object) -> dict:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _common(body: dict, cap: int) -> Request:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required (a string; GET /v1/models lists them)", param="model",
                       code="missing_required_parameter")
    for key, neutral in UNSUPPORTED.items():
        if key in body and body[key] not in neutral:
            raise APIError(400, f"'{key}' is not supported by this server", param=key, code="unsupported_parameter")
    n = body.get("n")
    if n is not None and n != 1:
        raise APIError(400, f"'n' must be 1 (one answer per request), got {n!r}", param="n",
                       code="unsupported_parameter")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", param="stream_options")
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise APIError(400, "'top_p' must be above 0", param="top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise APIError(400, f"'seed' must be an integer, got {seed!r}", param="seed")
    return Request(model=model, stream=stream, include_usage=bool(options.get("include_usage")),
                   max_tokens=_max_tokens(body, cap), sampling=Sampling(temperature, top_p, seed),
                   stops=_stops(body.get("stop")))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(body: dict, key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise APIError(400, f"'{key}' must be a number from {low:g} to {high:g}, got {value!r}", param=key)
    return float(value)


def _max_tokens(body: dict, cap: int) -> int | None:
    given = {k: body[k] for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None}
    if len(set(map(repr, given.values()))) > 1:
        raise APIError(400, "'max_tokens' and 'max_completion_tokens' disagree; give one",
                       param="max_completion_tokens")
    for key, value in given.items():
        if not _is_int(value) or value < 1:
            raise APIError(400, f"'{key}' must be a positive integer, got {value!r}", param=key)
        if value > cap:
            raise APIError(400, f"'{key}' is {value}, above this server's cap of {cap} (--max-tokens)",
                           param=key)
        return value
    return None


def _stops(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOPS
            or not all(isinstance(s, str) and s for s in stops)):
        raise APIError(400, f"'stop' must be a non-empty string or an array of up to {MAX_STOPS} of them",
                       param="stop")
    return tuple(stops)


def _message(message, index: int) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise APIError(400, f"'{param}' must be an object with 'role' and 'content'", param=param)
    role = message.get("role")
    if role not in ROLES:
        raise APIError(400, f"'{param}.role' is {role!r}; expected one of {', '.join(ROLES)}",
                       param=f"{param}.role")
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise APIError(400, f"'{param}.content' may hold only text parts", param=f"{param}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise APIError(400, f"'{param}.content' must be a string or an array of text parts",
                       param=f"{param}.content")
    return {"role": "system" if role == "developer" else role, "content": content}


# --- responses -----------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def chat_response(rid: str, model: str, answer: Answer) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "logprobs": None, "finish_reason": answer.finish_reason}],
            "usage": usage(answer)}


def chat_chunk(rid: str, model: str, delta: dict, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}


def completion_response(rid: str, model: str, answer: Answer) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": answer.text, "logprobs": None,
                         "finish_reason": answer.finish_reason}],
            "usage": usage(answer)}


def completion_chunk(rid: str, model: str, text: str, finish_reason: str | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}
