"""Chat prompts built by mistral-common, so `--chat` feeds the model what Mistral's reference stack does.

The conversation becomes a ChatCompletionRequest and mistral-common's encode_chat_completion
turns it into ids: for v1 `[INST] … [/INST]` is text, from v2 on `[INST]`/`[/INST]` are control
tokens no text encodes to, and v7 has system-prompt tokens of its own. `--safe-prompt` is Mistral's
guardrail prompt as a system message (mistral-common puts it, with a blank line, before the first
user message for v1, before the last one for v2/v3, in its own tokens from v7 on).
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from mdist.errors import InputError
from mdist.jsonio import printable

# Mistral's guardrailing system prompt (docs.mistral.ai, "Guardrailing"; the API's safe_prompt).
SAFE_PROMPT = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. "
    "Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity."
)
ROLES = ("system", "user", "assistant")

logging.getLogger("mistral_common").addHandler(logging.NullHandler())  # never Python's last-resort stderr


@contextmanager
def quiet() -> Iterator[None]:
    """mistral-common's FutureWarnings and DeprecationWarnings would land in the middle of streamed
    text or after a one-line error: none of them is about the user's input, so they are dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def chat_request(messages: Sequence[tuple[str, str]], *, safe_prompt: bool = False) -> Any:
    """A ChatCompletionRequest of (role, text) pairs, the guardrail prompt first when asked."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    pairs = [("system", SAFE_PROMPT)] * safe_prompt + list(messages)
    unknown = [role for role, _ in pairs if role not in kinds]
    if unknown:
        raise InputError(f"unknown chat role {printable(unknown[0])!r} (expected one of {', '.join(ROLES)})")
    return ChatCompletionRequest(messages=[kinds[role](content=text) for role, text in pairs])


def encode_chat(mistral_tokenizer: Any, messages: Sequence[tuple[str, str]], *, safe_prompt: bool = False) -> list[int]:
    """Token ids of the conversation, `<s>` first, ready for the model to write the next reply."""
    from mistral_common.exceptions import MistralCommonException

    with quiet():
        try:
            return list(mistral_tokenizer.encode_chat_completion(chat_request(messages, safe_prompt=safe_prompt)).tokens)
        except (MistralCommonException, ValueError, AssertionError) as exc:  # pydantic's are ValueErrors
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"mistral-common refused the chat request: {printable(reason, 200)}") from None
