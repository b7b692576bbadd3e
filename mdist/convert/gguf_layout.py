"""How a Mistral checkpoint maps onto llama.cpp's GGUF `llama` architecture, in one place.

Writer (convert), digest and runner all ask this module, so the three can never disagree on a
name, on which tensors stay F32, or on how a type is encoded. The rules follow llama.cpp's
`convert_hf_to_gguf.py`: 1-D tensors, norms and the MoE router stay F32; a Q8_0 tensor whose rows
are not whole blocks falls back to F16; every encoding is the `gguf` package's reference one
(`gguf.quants.quantize`), applied to the float32 widening of the source, row by row (each Q8_0
block depends only on its own 32 values, so chunks of rows give the same bytes as the whole).

Rotary layout: llama.cpp's rope for `llama` expects q/k rows in Mistral's interleaved order, which
is the order of `consolidated.00.pth`; an HF-layout source is permuted back before writing.
"""

from __future__ import annotations

import re

import numpy as np

from mdist.errors import InputError

ARCH = "llama"
TYPES = ("bf16", "f16", "f32", "q8_0")
FILE_TYPES = {"F32": 0, "F16": 1, "Q8_0": 7, "BF16": 32}  # gguf.LlamaFileType
CHUNK_BYTES = 4 << 20  # source bytes encoded at once: Q8_0's temporaries are ~10x this in float32

_TOP = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
        "output.weight": "output.weight"}
_LAYER = {
    "attention.wq.weight": "attn_q.weight", "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight", "attention.wo.weight": "attn_output.weight",
    "feed_forward.w1.weight": "ffn_gate.weight", "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight", "attention_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight", "feed_forward.gate.weight": "ffn_gate_inp.weight",
}
_EXPERTS = {"w1": "ffn_gate_exps.weight", "w2": "ffn_down_exps.weight", "w3": "ffn_up_exps.weight"}
_TOP_BACK = {v: k for k, v in _TOP.items()}
_LAYER_BACK = {v: k for k, v in _LAYER.items()}
_EXPERTS_BACK = {v: k for k, v in _EXPERTS.items()}
_MISTRAL_LAYER = re.compile(r"layers\.([0-9]+)\.(.+)")
_MISTRAL_EXPERT = re.compile(r"feed_forward\.experts\.([0-9]+)\.(w[123])\.weight")
_GGUF_LAYER = re.compile(r"blk\.([0-9]+)\.(.+)")


def gguf_name(name: str) -> tuple[str, int | None]:
    """(GGUF name, expert index or None) of a Mistral tensor name; experts share one stacked tensor."""
    if name in _TOP:
        return _TOP[name], None
    match = _MISTRAL_LAYER.fullmatch(name)
    if match:
        layer, rest = match.groups()
        if rest in _LAYER:
            return f"blk.{layer}.{_LAYER[rest]}", None
        expert = _MISTRAL_EXPERT.fullmatch(rest)
        if expert:
            return f"blk.{layer}.{_EXPERTS[expert.group(2)]}", int(expert.group(1))
    raise InputError(f"tensor {name[:100]!r} is not part of the Mistral architecture; cannot name it in GGUF")


def mistral_names(name: str, experts: int = 0) -> list[str]:
    """The Mistral name(s) a GGUF tensor holds (a stacked expert tensor holds `experts` of them)."""
    if name in _TOP_BACK:
        return [_TOP_BACK[name]]
    match = _GGUF_LAYER.fullmatch(name)
    if match:
        layer, rest = match.groups()
        if rest in _LAYER_BACK:
            return [f"layers.{layer}.{_LAYER_BACK[rest]}"]
        if rest in _EXPERTS_BACK:
            return [f"layers.{layer}.feed_forward.experts.{j}.{_EXPERTS_BACK[rest]}.weight" for j in range(experts)]
    raise InputError(f"GGUF tensor {name[:100]!r} is not one the llama architecture of a Mistral model has")


def stored_type(gguf: str, shape: tuple[int, ...], wanted: str) -> str:
    """The GGML type a tensor is written as, as llama.cpp's converter decides it."""
    if len(shape) <= 1 or gguf.endswith("_norm.weight") or gguf.endswith("ffn_gate_inp.weight"):
        return "F32"
    wanted = wanted.upper()
    if wanted == "Q8_0" and shape[-1] % 32:
        return "F16"  # the converter's fallback when rows are not whole blocks
    return wanted


def nbytes(shape: tuple[int, ...], ggml_type: str) -> int:
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if ggml_type == "Q8_0":
        return count // 32 * 34
    return count * (4 if ggml_type == "F32" else 2)


def to_float32(rows: np.ndarray, dtype: str) -> np.ndarray:
    """Exact widening of raw source rows (bf16 as uint16 bits) to float32."""
    if dtype == "BF16":
        return (rows.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F16", "F32"):
        return rows.astype(np.float32)
    raise InputError(f"cannot convert {dtype} tensors to GGUF (only BF16, F16 and F32)")


def encode(rows: np.ndarray, dtype: str, ggml_type: str) -> np.ndarray:
    """Source rows (raw, in `dtype`) as the bytes of `ggml_type`. Same type: the bytes unchanged;
    otherwise the gguf package's reference encoder on the float32 widening."""
    if ggml_type == dtype:
        return np.ascontiguousarray(rows).view(np.uint8)
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    wide = to_float32(rows, dtype)
    return np.ascontiguousarray(quantize(wide, GGMLQuantizationType[ggml_type])).view(np.uint8)


def decode(raw: np.ndarray, ggml_type: str) -> np.ndarray:
    """Stored rows (uint8, as GGUFFile.raw gives them) as float32, for tests and small tensors."""
    if ggml_type == "F32":
        return raw.view(np.float32)
    if ggml_type == "F16":
        return raw.view(np.float16).astype(np.float32)
    if ggml_type == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if ggml_type == "Q8_0":
        blocks = raw.reshape(-1, 34)
        scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        values = blocks[:, 2:].view(np.int8).astype(np.float32)
        return (values * scales).reshape(*raw.shape[:-1], raw.shape[-1] // 34 * 32)
    raise InputError(f"GGUF type {ggml_type} cannot be decoded by mdist (F32, F16, BF16, Q8_0 only)")
