"""Text generation with a KV cache, streaming decoded text and honest timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from mdist.errors import InputError
from mdist.runner.model import Model
from mdist.runner.sampling import Sampler


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stopped_by: str = "max_tokens"
    token_ids: list[int] = field(default_factory=list)

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tok_s(self) -> float:
        # the first generated token comes from the prefill; the rest each cost one decode step
        steps = max(0, self.generated_tokens - 1)
        return steps / self.decode_seconds if self.decode_seconds else 0.0


def generate_ids(
    model: Model, prompt_ids: list[int], max_tokens: int, sampler: Sampler, *,
    eos_id: int | None = None, stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yield generated token ids: prefill the prompt once, then one cached step per token."""
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    if max_tokens <= 0:
        return
    cache = model.new_cache(len(prompt_ids) + max_tokens)
    started = time.perf_counter()
    logits = _finite(model.forward(np.asarray(prompt_ids), cache, last_only=True)[-1])
    stats.prefill_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(max_tokens):
        token = sampler(logits)
        if eos_id is not None and token == eos_id:
            stats.stopped_by = "eos"
            break
        stats.generated_tokens += 1
        stats.token_ids.append(token)
        yield token
        if index + 1 < max_tokens:
            logits = _finite(model.forward(np.asarray([token]), cache)[-1])
    stats.decode_seconds = time.perf_counter() - started


def _finite(logits: np.ndarray) -> np.ndarray:
    """NaN or infinite scores come from weights that are (at least partly) not numbers: stop with
    one line rather than print whatever token a NaN comparison happens to pick."""
    if not np.isfinite(logits).all():
        raise InputError("the model's output scores are not finite (NaN or infinity): its weights hold values "
                         "that are not numbers; check them with `mdist verify`")
    return logits
