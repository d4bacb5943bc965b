"""Reading an incoming OpenAI request: just enough validation to answer bad input early, and the
facts the scheduler needs (prompt text, a cheap prompt-size estimate, ``max_tokens``, streaming).

The engine stays the authority on everything else (sampling parameters, exact token counts
against the context window): what it rejects is passed back in the OpenAI error format.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from goodput.serving.openai_errors import invalid_request, model_not_found

Endpoint = Literal["chat", "completions"]

# A word-piece tokenizer yields about one token per four characters of English text; scheduling
# only needs the size to within a factor, and tokenizing in the gateway would cost milliseconds.
_CHARS_PER_TOKEN = 4.0
_MESSAGE_OVERHEAD_TOKENS = 4
#: No tokenizer puts more characters than this into one token on natural text: a prompt with more
#: than ``max_model_len`` times this many characters cannot fit the context, whatever its tokens.
MAX_CHARS_PER_TOKEN = 32
#: Bounds on the shape of a request, checked before anything walks it.
MAX_JSON_DEPTH = 32
MAX_MESSAGES = 4096


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    endpoint: Endpoint
    body: dict[str, Any]
    model: str
    stream: bool
    client_wants_usage: bool
    max_tokens: int | None
    prompt_text: str
    prompt_tokens_estimate: int


def parse_request(
    raw: bytes,
    endpoint: Endpoint,
    known_models: Collection[str],
    max_model_len: int | None,
) -> ParsedRequest:
    """Validate ``raw`` as a chat or text completion request; raise ``OpenAIError`` if it is bad."""
    too_deep = f"The request body is nested deeper than {MAX_JSON_DEPTH} levels."
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}") from None
    except RecursionError:  # deeper than the parser's own stack
        raise invalid_request(too_deep) from None
    if _depth_exceeds(body, MAX_JSON_DEPTH):
        raise invalid_request(too_deep)
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("Missing required parameter: 'model'.", param="model")
    if known_models and model not in known_models:
        raise model_not_found(model)

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_request("'stream' must be a boolean.", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid_request("'stream_options' must be an object.", param="stream_options")
    wants_usage = bool(stream and options and options.get("include_usage"))

    if endpoint == "chat":
        prompt_text, estimate, exact = _chat_prompt(body)
        max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"))
    else:
        prompt_text, estimate, exact = _completion_prompt(body)
        max_tokens = _max_tokens(body, ("max_tokens",))
    if max_model_len is not None:
        _check_context(prompt_text, exact, max_tokens, max_model_len)
    return ParsedRequest(
        endpoint=endpoint,
        body=body,
        model=model,
        stream=stream,
        client_wants_usage=wants_usage,
        max_tokens=max_tokens,
        prompt_text=prompt_text,
        prompt_tokens_estimate=estimate,
    )


def upstream_body(request: ParsedRequest) -> bytes:
    """The body sent to the engine: streams always ask for usage, which the gateway needs to
    count output tokens; the relay strips it again when the client did not ask."""
    body = request.body
    if request.stream and not request.client_wants_usage:
        body = dict(body)
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return json.dumps(body, separators=(",", ":")).encode()


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_context(
    text: str, exact_tokens: int | None, max_tokens: int | None, max_model_len: int
) -> None:
    """Refuse what cannot fit the context, before any work is spent on it: ``max_tokens`` alone,
    an exact token count (prompts given as token ids) with ``max_tokens``, or a text prompt too
    long to fit even at ``MAX_CHARS_PER_TOKEN``. Anything closer is the engine's to judge."""
    if max_tokens is not None and max_tokens > max_model_len:
        raise invalid_request(
            f"max_tokens ({max_tokens}) is larger than the model's context length "
            f"({max_model_len}).",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if exact_tokens is not None and exact_tokens + (max_tokens or 1) > max_model_len:
        raise invalid_request(
            f"The prompt ({exact_tokens} tokens) and max_tokens ({max_tokens or 1}) exceed the "
            f"model's context length ({max_model_len}).",
            code="context_length_exceeded",
        )
    if len(text) > max_model_len * MAX_CHARS_PER_TOKEN:
        raise invalid_request(
            f"The prompt ({len(text)} characters) is longer than the model's context length "
            f"({max_model_len} tokens) can hold.",
            code="context_length_exceeded",
        )


def _max_tokens(body: dict[str, Any], names: tuple[str, ...]) -> int | None:
    """The output bound (the first of ``names`` given), after checking every one of them."""
    found: int | None = None
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid_request(f"'{name}' must be a positive integer.", param=name)
        found = value if found is None else found
    return found


def _chat_prompt(body: dict[str, Any]) -> tuple[str, int, int | None]:
    """Prompt text, its estimated tokens, and an exact count of the longest prompt (never known
    for chat)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request(
            "Missing required parameter: 'messages' (a non-empty array).", param="messages"
        )
    if len(messages) > MAX_MESSAGES:
        raise invalid_request(
            f"Too many messages ({len(messages)}; at most {MAX_MESSAGES}).", param="messages"
        )
    parts: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid_request(
                f"messages[{i}] must be an object with a 'role'.", param=f"messages[{i}]"
            )
        parts.append(f"{message['role']}: {_content_text(message.get('content'))}")
    text = "\n".join(parts)
    estimate = int(len(text) / _CHARS_PER_TOKEN) + _MESSAGE_OVERHEAD_TOKENS * len(messages)
    return text, max(1, estimate), None


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _completion_prompt(body: dict[str, Any]) -> tuple[str, int, int | None]:
    """Prompt text, its estimated tokens, and the exact token count of the longest prompt when
    given as token ids."""
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise invalid_request("Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(prompt, str):
        return prompt, max(1, int(len(prompt) / _CHARS_PER_TOKEN)), None
    if isinstance(prompt, list):
        if all(_is_token_id(p) for p in prompt):  # one prompt given as token ids
            return "", len(prompt), len(prompt)
        if all(isinstance(p, str) for p in prompt):
            text = "\n".join(prompt)
            return text, max(1, int(len(text) / _CHARS_PER_TOKEN)), None
        if all(isinstance(p, list) and all(_is_token_id(t) for t in p) for p in prompt):
            # Several prompts: the engine holds them all; each must fit the context.
            return "", sum(len(p) for p in prompt), max(len(p) for p in prompt)
    raise invalid_request(
        "'prompt' must be a string, an array of strings, or token ids.", param="prompt"
    )


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
