"""One `mdist run`: load, tokenize, generate, stream text, report timings. Used by the CLI and demo."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from mdist.errors import InputError
from mdist.runner.generate import GenerationStats, generate_ids
from mdist.runner.model import MAX_CONTEXT, Model
from mdist.runner.sampling import Sampler
from mdist.runner.tokenizer import StreamDecoder, Tokenizer

MAX_PROMPT_CHARS = 100_000


def check_prompt(prompt: str) -> None:
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the prompt is not valid UTF-8") from None
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")


def run_prompt(
    model_path: Path, prompt: str, *, max_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
    seed: int | None = None, chat: bool = False, safe_prompt: bool = False,
    on_text: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    check_prompt(prompt)
    started = time.perf_counter()
    model = Model.load(model_path)
    assert model.path is not None
    tokenizer = Tokenizer.of_folder(model.path)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise InputError(
            f"tokenizer {tokenizer.path.name} has {tokenizer.vocab_size} tokens but the model's vocabulary is "
            f"{model.config.vocab_size}"
        )
    load_seconds = time.perf_counter() - started
    prompt_ids = tokenizer.encode_prompt(prompt, chat=chat, safe_prompt=safe_prompt)
    if len(prompt_ids) + max_tokens > MAX_CONTEXT:
        raise InputError(f"prompt ({len(prompt_ids)} tokens) plus --max-tokens exceeds {MAX_CONTEXT} tokens")
    stats = GenerationStats()
    decoder = StreamDecoder(tokenizer, prompt_ids)
    sampler = Sampler(temperature, top_p, seed)
    pieces: list[str] = []
    for token in generate_ids(model, prompt_ids, max_tokens, sampler, eos_id=tokenizer.eos_id, stats=stats):
        delta = decoder.push(token)
        if delta:
            pieces.append(delta)
            if on_text:
                on_text(delta)
    tail = decoder.flush()
    if tail:
        pieces.append(tail)
        if on_text:
            on_text(tail)
    return {
        "text": "".join(pieces),
        "prompt_token_ids": prompt_ids,
        "token_ids": stats.token_ids,
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "stopped_by": stats.stopped_by,
        "load_seconds": round(load_seconds, 4),
        "prefill_seconds": round(stats.prefill_seconds, 4),
        "decode_seconds": round(stats.decode_seconds, 4),
        "prefill_tok_s": round(stats.prefill_tok_s, 2),
        "decode_tok_s": round(stats.decode_tok_s, 2),
        "model": str(model.path),
        "weights_cached_f32": model.weights.cached,
        "seconds_per_token": round(1 / stats.decode_tok_s, 4) if stats.decode_tok_s else None,
        **_weights_versus_ram(model),
    }


def _weights_versus_ram(model: Model) -> dict[str, Any]:
    """Stored weight bytes against physical memory: weights larger than RAM are read from disk
    for every token (Mixtral 8x7B is 87 GiB), so decoding is disk-bound, not compute-bound. The
    bytes as the file stores them (a Q8_0 GGUF's blocks, bf16), never a float32 copy made of them."""
    weights = model.weights.stored_bytes
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 0
    return {"weights_bytes": weights, "ram_bytes": ram, "disk_bound": bool(ram) and weights > ram}
