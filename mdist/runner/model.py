"""The Mistral architecture in numpy, read top to bottom (after llama2.c's model.py).

RMSNorm -> attention (rotary, grouped-query, sliding window) -> RMSNorm -> SwiGLU, repeated,
then a final RMSNorm and an untied output head. Everything is computed in float32.
Mixtral replaces the SwiGLU by a mixture of experts: a router picks the top-k experts per token,
and only those experts' weights are read (a memory-mapped model larger than RAM still decodes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdist.errors import InputError
from mdist.modelconfig import MistralConfig, check_tensor_shapes
from mdist.model_folder import read_config
from mdist.runner.weights import DEFAULT_F32_BUDGET, WeightStore, load_tensors, quiet_floats

MAX_CONTEXT = 32768
_PREFILL_CHUNK = 256
_SCORES_BYTES = 256 << 20


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    variance = np.mean(x * x, axis=-1, keepdims=True, dtype=np.float32)
    return x * (1.0 / np.sqrt(variance + np.float32(eps))) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (np.float32(1.0) + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


class Rotary:
    """Rotary position embeddings; 'interleaved' pairs (Mistral) or 'half' split (transformers)."""

    def __init__(self, head_dim: int, theta: float, style: str) -> None:
        self.half = head_dim // 2
        self.inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
        self.style = style

    def __call__(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """x: (T, heads, head_dim) -> rotated copy."""
        angles = np.outer(positions, self.inv_freq)
        cos = np.cos(angles).astype(np.float32)[:, None, :]
        sin = np.sin(angles).astype(np.float32)[:, None, :]
        if self.style == "interleaved":
            a, b = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = a * cos - b * sin
            out[..., 1::2] = a * sin + b * cos
            return out
        a, b = x[..., : self.half], x[..., self.half :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


class KVCache:
    """Keys and values per layer; a rolling buffer of W slots (slot = position mod W) with a window."""

    def __init__(self, config: MistralConfig, capacity: int) -> None:
        self.window = config.sliding_window
        # A ring of W slots only when the window is the smaller: memory follows the context used,
        # not a window a config file may set to 2**31. Otherwise one slot per position, capped.
        self.rolling = bool(self.window) and self.window <= capacity
        slots = self.window if self.rolling else capacity
        shape = (config.n_layers, config.n_kv_heads, slots, config.head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.slots = slots
        self.pos = 0

    def past_positions(self, start: int) -> np.ndarray:
        """Cached positions a query at `start` may still see (all of them without a window)."""
        first = max(0, start - self.window + 1) if self.window else 0
        return np.arange(first, start)

    def store(self, layer: int, positions: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """k, v: (kv_heads, T, head_dim). Only the last `slots` positions can matter later."""
        if positions[-1] >= self.slots and not self.rolling:
            raise InputError(f"sequence longer than the cache capacity of {self.slots} tokens")
        keep = slice(-self.slots, None)
        slots = positions[keep] % self.slots
        self.k[layer][:, slots] = k[:, keep]
        self.v[layer][:, slots] = v[:, keep]

    def load(self, layer: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slots = positions % self.slots
        return self.k[layer][:, slots], self.v[layer][:, slots]


@dataclass
class Model:
    config: MistralConfig
    weights: WeightStore
    rope_style: str
    path: Path | None = None

    @classmethod
    def load(cls, path: Path | str, *, f32_budget_bytes: int = DEFAULT_F32_BUDGET) -> "Model":
        """Load the weights mdist.model_folder chooses for `run` (a raw .pth is converted once first)."""
        from mdist.runner.resolve import resolve_model

        directory, layout = resolve_model(Path(path))
        if layout.kind == "gguf":  # mdist.runner.gguf_weights: config from its metadata, Q8_0 decoded on the fly
            from mdist.runner.gguf_weights import load_gguf

            config, weights, shapes = load_gguf(directory, layout.weights[0], f32_budget_bytes)
            check_tensor_shapes(shapes, config)
            return cls(config, weights, "interleaved", directory)
        config = read_config(directory, layout)
        tensors = load_tensors(directory, layout)
        check_tensor_shapes({name: tuple(array.shape) for name, array in tensors.items()}, config)
        weights = WeightStore(tensors, f32_budget_bytes)
        return cls(config, weights, "half" if layout.kind == "hf" else "interleaved", directory)

    def __post_init__(self) -> None:
        self.rotary = Rotary(self.config.head_dim, self.config.rope_theta, self.rope_style)

    def new_cache(self, capacity: int = MAX_CONTEXT) -> KVCache:
        return KVCache(self.config, capacity)

    def logits(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Logits (len(tokens), vocab) of a full sequence, float32."""
        tokens = np.asarray(tokens, dtype=np.int64)
        return self.forward(tokens, self.new_cache(len(tokens)))

    def forward(self, tokens: np.ndarray, cache: KVCache, *, last_only: bool = False) -> np.ndarray:
        """Run `tokens` at the positions after what `cache` holds; return their logits.

        A long prompt runs in chunks: attention scores are heads x chunk x keys floats, so a
        12,000-token prompt in one pass would need gigabytes; chunks keep them under ~256 MB."""
        c = self.config
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.size == 0:
            return np.zeros((0, c.vocab_size), dtype=np.float32)
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise InputError("token id outside the vocabulary")
        step = self._chunk(cache.pos + len(tokens))
        outputs = []
        with quiet_floats():
            for start in range(0, len(tokens), step):
                out = self._forward_chunk(tokens[start : start + step], cache, last_only=last_only)
                if not last_only or start + step >= len(tokens):
                    outputs.append(out)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _chunk(self, end: int) -> int:
        """Tokens per pass so that the attention scores stay near _SCORES_BYTES."""
        keys = min(end, self.config.sliding_window or end) + _PREFILL_CHUNK
        return int(max(16, min(_PREFILL_CHUNK, _SCORES_BYTES // (4 * self.config.n_heads * keys))))

    def _forward_chunk(self, tokens: np.ndarray, cache: KVCache, *, last_only: bool) -> np.ndarray:
        c = self.config
        T = len(tokens)
        positions = np.arange(cache.pos, cache.pos + T)
        past = cache.past_positions(cache.pos)
        mask = _attention_mask(np.concatenate([past, positions]), positions, c.sliding_window)

        with self.weights.compute_context():
            return self._layers(tokens, positions, past, mask, cache, last_only)

    def _layers(self, tokens: np.ndarray, positions: np.ndarray, past: np.ndarray, mask: np.ndarray,
                cache: KVCache, last_only: bool) -> np.ndarray:
        c, w, T = self.config, self.weights, len(tokens)
        group = c.n_heads // c.n_kv_heads
        x = w.rows("tok_embeddings.weight", tokens)
        for layer in range(c.n_layers):
            p = f"layers.{layer}."
            h = rms_norm(x, w.vector(p + "attention_norm.weight"), c.norm_eps)
            q = w.matmul(h, p + "attention.wq.weight").reshape(T, c.n_heads, c.head_dim)
            k = w.matmul(h, p + "attention.wk.weight").reshape(T, c.n_kv_heads, c.head_dim)
            v = w.matmul(h, p + "attention.wv.weight").reshape(T, c.n_kv_heads, c.head_dim)
            q, k = self.rotary(q, positions), self.rotary(k, positions)
            k, v = k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # (kv_heads, T, head_dim)
            past_k, past_v = cache.load(layer, past)
            keys = np.concatenate([past_k, k], axis=1)
            values = np.concatenate([past_v, v], axis=1)
            cache.store(layer, positions, k, v)
            # query head h uses kv head h // group: group the query heads under their kv head
            q = q.reshape(T, c.n_kv_heads, group, c.head_dim).transpose(1, 2, 0, 3)
            scores = (q.reshape(c.n_kv_heads, group * T, c.head_dim) @ keys.transpose(0, 2, 1))
            scores = scores.reshape(c.n_kv_heads, group, T, -1) * np.float32(c.head_dim**-0.5)
            scores += mask
            attention = softmax(scores).reshape(c.n_kv_heads, group * T, -1) @ values
            attention = attention.reshape(c.n_heads, T, c.head_dim).transpose(1, 0, 2).reshape(T, -1)
            x = x + w.matmul(attention, p + "attention.wo.weight")
            h = rms_norm(x, w.vector(p + "ffn_norm.weight"), c.norm_eps)
            if c.is_moe:
                x = x + self._experts(h, p + "feed_forward.")
            else:
                x = x + self._swiglu(h, p + "feed_forward.")
        cache.pos += T
        if last_only:
            x = x[-1:]
        x = rms_norm(x, w.vector("norm.weight"), c.norm_eps)
        return w.matmul(x, "output.weight")


    def _swiglu(self, h: np.ndarray, prefix: str) -> np.ndarray:
        """w2 · (silu(w1 · h) * (w3 · h))"""
        w = self.weights
        gate = silu(w.matmul(h, prefix + "w1.weight"))
        gate *= w.matmul(h, prefix + "w3.weight")
        return w.matmul(gate, prefix + "w2.weight")

    def _experts(self, h: np.ndarray, prefix: str) -> np.ndarray:
        """Mixtral's sparse layer: softmax over the router's logits, keep the top k, renormalise
        the kept weights to sum to 1, and add each chosen expert's SwiGLU, weighted. Each expert
        runs once, on the tokens routed to it."""
        c = self.config
        logits = self.weights.matmul(h, prefix + "gate.weight")  # (T, experts)
        chosen = np.argsort(-logits, axis=-1, kind="stable")[:, : c.n_experts_per_tok]
        weights = softmax(np.take_along_axis(logits, chosen, axis=-1))  # = renormalised top-k probabilities
        out = np.zeros_like(h)
        for expert in np.unique(chosen):
            tokens, slot = np.nonzero(chosen == expert)
            y = self._swiglu(h[tokens], f"{prefix}experts.{expert}.")
            out[tokens] += weights[tokens, slot][:, None] * y
        return out


def _attention_mask(key_positions: np.ndarray, query_positions: np.ndarray, window: int | None) -> np.ndarray:
    """Additive mask: query i sees key j when j <= i and (no window or i - W < j)."""
    i = query_positions[:, None]
    j = key_positions[None, :]
    allowed = j <= i
    if window:
        allowed &= j > i - window
    return np.where(allowed, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
