"""The FastAPI application: OpenAI's endpoints over a ``ModelPool``.

Requests are admitted up to ``max_running + max_waiting`` at a time across the server
(beyond that: 429), read with a cap on the body size (413), authenticated with a bearer
key compared in constant time (401; ``/health`` is open), validated (400) and handed to
the model's batcher; answers come back whole or as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from workbench.serve import protocol
from workbench.serve.batcher import Answer, BatcherStopped, GenerationRequest
from workbench.serve.pool import ModelPool, PoolFull
from workbench.serve.protocol import APIError


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 1024  # per answer; a request asking for more is refused
    max_body_bytes: int = 1 << 20
    max_running: int = 16  # rows decoded together by one model
    max_waiting: int = 64  # admitted requests beyond those, across the server


class Admission:
    """Counts requests in flight; refuses (429) above the limit instead of queueing forever."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0

    def enter(self) -> None:
        if self.in_flight >= self.limit:
            raise APIError(429, f"the server is full ({self.in_flight} requests in flight); retry shortly",
                           type="rate_limit_error", code="rate_limit_exceeded")
        self.in_flight += 1

    def leave(self) -> None:
        self.in_flight -= 1


def build_app(pool: ModelPool, limits: Limits, api_key: str | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        await asyncio.to_thread(pool.close)  # cancels what is still running once uvicorn stops waiting

    app = FastAPI(title="workbench serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    admission = Admission(limits.max_running + limits.max_waiting)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code=code).body(),
                            status_code=exc.status_code)

    @app.middleware("http")
    async def authenticate(request: HTTPRequest, call_next):
        if api_key is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
                error = APIError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                 type="invalid_request_error", code="invalid_api_key")
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(pool.checkpoints), "loaded": pool.loaded_names}

    def model_card(name: str) -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "workbench"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card(name) for name in pool.checkpoints]}

    @app.get("/v1/models/{name}")
    async def model(name: str):
        _check_model(pool, name)
        return model_card(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        parsed = protocol.parse_chat(await _read_json(request, limits.max_body_bytes), limits.max_tokens)
        return await _answer(pool, limits, admission, parsed, chat=True)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        parsed = protocol.parse_completion(await _read_json(request, limits.max_body_bytes), limits.max_tokens)
        return await _answer(pool, limits, admission, parsed, chat=False)

    return app


async def _read_json(request: HTTPRequest, cap: int):
    too_big = APIError(413, f"request body over this server's cap of {cap} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise too_big
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None


def _check_model(pool: ModelPool, name: str) -> None:
    if name not in pool.checkpoints:
        raise APIError(404, f"model '{name}' does not exist; served: {', '.join(pool.checkpoints)}",
                       param="model", code="model_not_found")


def _prompt_ids(loaded, parsed: protocol.Request, chat: bool) -> list[int]:
    from workbench.modeling import prompt_ids

    tokenizer = loaded.tokenizer
    if chat:
        if not tokenizer.chat_template:
            raise APIError(400, f"model '{parsed.model}' has no chat template; use /v1/completions",
                           param="messages")
        try:
            return prompt_ids(tokenizer, parsed.messages)
        except Exception as exc:  # the template itself refuses the conversation (raise_exception)
            raise APIError(400, f"the chat template of '{parsed.model}' refused these messages: {exc}",
                           param="messages") from None
    if isinstance(parsed.prompt, str):
        return tokenizer(parsed.prompt)["input_ids"]
    vocab = len(tokenizer)
    if max(parsed.prompt) >= vocab:
        raise APIError(400, f"'prompt' holds token id {max(parsed.prompt)}, outside the vocabulary of "
                            f"{vocab}", param="prompt")
    return parsed.prompt


def _budget(loaded, parsed: protocol.Request, prompt_len: int, cap: int) -> int:
    """Tokens the answer may have: what was asked, within the model's context."""
    context = loaded.max_positions
    room = cap if context is None else min(cap, context - prompt_len)
    if room < 1:
        raise APIError(400, f"the prompt is {prompt_len} tokens, which leaves no room in the context of "
                            f"'{parsed.model}' ({context} tokens)", param="messages", code="context_length_exceeded")
    if parsed.max_tokens is not None and parsed.max_tokens > room:
        raise APIError(400, f"the prompt ({prompt_len} tokens) plus 'max_tokens' ({parsed.max_tokens}) exceeds "
                            f"the context of '{parsed.model}' ({context} tokens)", param="max_tokens",
                       code="context_length_exceeded")
    return parsed.max_tokens or room


async def _answer(pool: ModelPool, limits: Limits, admission: Admission, parsed: protocol.Request, chat: bool):
    _check_model(pool, parsed.model)
    admission.enter()
    try:
        events: asyncio.Queue = asyncio.Queue()
        request = await _submit(pool, limits, parsed, chat, events)
    except BaseException:
        admission.leave()
        raise
    released = False

    async def release() -> None:
        """Once per request, however it ends: stop generating for it and free its place."""
        nonlocal released
        if not released:
            released = True
            request.cancel()
            admission.leave()

    rid = protocol.new_id("chatcmpl" if chat else "cmpl")
    if parsed.stream:
        # The background task also runs when the client leaves before the stream's first chunk.
        return StreamingResponse(_stream(rid, parsed, chat, events, release), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"}, background=BackgroundTask(release))
    try:
        while True:
            kind, value = await events.get()
            if kind == "done":
                break
    finally:
        await release()
    answer = _raise_if_failed(value)
    return (protocol.chat_response if chat else protocol.completion_response)(rid, parsed.model, answer)


async def _submit(pool, limits, parsed, chat, events: asyncio.Queue) -> GenerationRequest:
    loop = asyncio.get_running_loop()
    for _ in range(3):  # the model may be unloaded between lookup and submission
        try:
            loaded = await asyncio.to_thread(pool.get, parsed.model)
        except PoolFull as exc:
            raise APIError(503, str(exc), code="server_busy") from None
        prompt_ids = _prompt_ids(loaded, parsed, chat)
        request = GenerationRequest(
            prompt_ids=prompt_ids, max_new_tokens=_budget(loaded, parsed, len(prompt_ids), limits.max_tokens),
            sampling=parsed.sampling, stops=parsed.stops,
            on_text=lambda text: loop.call_soon_threadsafe(events.put_nowait, ("text", text)),
            on_done=lambda answer: loop.call_soon_threadsafe(events.put_nowait, ("done", answer)),
        )
        try:
            loaded.batcher.submit(request)
            return request
        except BatcherStopped:
            continue
    raise APIError(503, f"model '{parsed.model}' was unloaded while starting; retry", code="server_busy")


def _raise_if_failed(answer: Answer) -> Answer:
    if answer.finish_reason == "cancelled":
        raise APIError(503, f"the request was cancelled ({answer.error or 'server shutting down'})",
                       code="cancelled")
    if answer.finish_reason == "error":
        raise APIError(500, f"generation failed: {answer.error}")
    return answer


async def _stream(rid, parsed, chat, events: asyncio.Queue, release):
    def sse(payload) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    try:
        if chat:
            yield sse(protocol.chat_chunk(rid, parsed.model, {"role": "assistant", "content": ""}))
        while True:
            kind, value = await events.get()
            if kind == "text":
                yield sse(protocol.chat_chunk(rid, parsed.model, {"content": value}) if chat
                          else protocol.completion_chunk(rid, parsed.model, value))
                continue
            try:
                answer = _raise_if_failed(value)
            except APIError as exc:
                yield sse(exc.body())
                return
            final = (protocol.chat_chunk(rid, parsed.model, {}, answer.finish_reason) if chat
                     else protocol.completion_chunk(rid, parsed.model, "", answer.finish_reason))
            if parsed.include_usage:
                yield sse(final)
                final = {**final, "choices": []}
            final["usage"] = protocol.usage(answer)
            yield sse(final)
            yield "data: [DONE]\n\n"
            return
    finally:
        await release()
