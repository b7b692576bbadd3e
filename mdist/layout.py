"""Tensor naming and rotary layouts: Mistral's checkpoint names versus Hugging Face's.

Mistral's code rotates interleaved feature pairs (2i, 2i+1) of each head; transformers rotates
the two halves of each head (i, i + head_dim/2). Converting permutes the rows of wq and wk,
exactly as transformers' own `convert_mistral_weights_to_hf.py` does.
"""

from __future__ import annotations

import re

import numpy as np

from mdist.modelconfig import MistralConfig

_LAYER_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# Mixtral: the router and each expert's SwiGLU (w1 gate, w2 down, w3 up). transformers 5 fuses the
# experts in memory but reads and writes these per-expert names.
_MOE_ROUTER = ("feed_forward.gate.weight", "block_sparse_moe.gate.weight")
_MISTRAL_EXPERT = re.compile(r"feed_forward\.experts\.([0-9]+)\.(w[123])\.weight")
_HF_EXPERT = re.compile(r"block_sparse_moe\.experts\.([0-9]+)\.(w[123])\.weight")
_HF_LAYER_NAMES = {v: k for k, v in _LAYER_NAMES.items()}
_HF_TOP_NAMES = {v: k for k, v in _TOP_NAMES.items()}
_MISTRAL_LAYER = re.compile(r"layers\.([0-9]+)\.(.+)")  # fullmatch: `$` accepts a final newline
_HF_LAYER = re.compile(r"model\.layers\.([0-9]+)\.(.+)")


def mistral_to_hf_name(name: str) -> str:
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    match = _MISTRAL_LAYER.fullmatch(name)
    if match:
        layer, rest = match.groups()
        if rest in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[rest]}"
        if rest == _MOE_ROUTER[0]:
            return f"model.layers.{layer}.{_MOE_ROUTER[1]}"
        expert = _MISTRAL_EXPERT.fullmatch(rest)
        if expert:
            return f"model.layers.{layer}.block_sparse_moe.experts.{expert.group(1)}.{expert.group(2)}.weight"
    raise KeyError(name)


def hf_to_mistral_name(name: str) -> str:
    if name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[name]
    match = _HF_LAYER.fullmatch(name)
    if match:
        layer, rest = match.groups()
        if rest in _HF_LAYER_NAMES:
            return f"layers.{layer}.{_HF_LAYER_NAMES[rest]}"
        if rest == _MOE_ROUTER[1]:
            return f"layers.{layer}.{_MOE_ROUTER[0]}"
        expert = _HF_EXPERT.fullmatch(rest)
        if expert:
            return f"layers.{layer}.feed_forward.experts.{expert.group(1)}.{expert.group(2)}.weight"
    raise KeyError(name)


def heads_for(name: str, config: MistralConfig) -> int | None:
    """Number of heads whose rows must be permuted for this (Mistral-named) tensor, or None."""
    if name.endswith("attention.wq.weight"):
        return config.n_heads
    if name.endswith("attention.wk.weight"):
        return config.n_kv_heads
    return None


def interleaved_to_half_rows(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that turns an interleaved-pair weight into the half-split one: new = old[order]."""
    half = head_dim // 2
    order = np.empty(n_heads * head_dim, dtype=np.int64)
    for h in range(n_heads):
        base = h * head_dim
        for j in range(2):
            order[base + j * half : base + (j + 1) * half] = base + 2 * np.arange(half) + j
    return order


def half_to_interleaved_rows(n_heads: int, head_dim: int) -> np.ndarray:
    return np.argsort(interleaved_to_half_rows(n_heads, head_dim))
