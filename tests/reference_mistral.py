"""An independent torch transcription of Mistral's reference forward pass (one_file_ref.py style).

Interleaved-pair rotary embeddings via complex numbers, GQA by repeating kv heads, sliding-window
mask i - W < j <= i. Used only by tests, as the 'original' model that conversions must preserve.
"""

from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_logits(sd: dict[str, torch.Tensor], params: dict, tokens: list[int]) -> torch.Tensor:
    sd = {k: v.float() for k, v in sd.items()}
    n_heads, n_kv, hd = params["n_heads"], params["n_kv_heads"], params["head_dim"]
    eps, theta = params["norm_eps"], params.get("rope_theta", 10000.0)
    window = params.get("sliding_window")
    T = len(tokens)
    x = sd["tok_embeddings.weight"][torch.tensor(tokens)]
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    angles = torch.outer(torch.arange(T, dtype=torch.float64), freqs)
    cis = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = j <= i
    if window:
        allowed &= j > i - window

    def rotate(t: torch.Tensor) -> torch.Tensor:
        c = torch.view_as_complex(t.reshape(T, t.shape[1], hd // 2, 2).contiguous())
        return torch.view_as_real(c * cis[:, None, :]).reshape(T, t.shape[1], hd)

    for layer in range(params["n_layers"]):
        p = f"layers.{layer}."
        h = rms_norm(x, sd[p + "attention_norm.weight"], eps)
        q = rotate((h @ sd[p + "attention.wq.weight"].T).reshape(T, n_heads, hd))
        k = rotate((h @ sd[p + "attention.wk.weight"].T).reshape(T, n_kv, hd))
        v = (h @ sd[p + "attention.wv.weight"].T).reshape(T, n_kv, hd)
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = torch.einsum("ihd,jhd->hij", q, k) * hd**-0.5
        scores = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out = torch.einsum("hij,jhd->ihd", scores, v).reshape(T, n_heads * hd)
        x = x + out @ sd[p + "attention.wo.weight"].T
        h = rms_norm(x, sd[p + "ffn_norm.weight"], eps)
        gate = torch.nn.functional.silu(h @ sd[p + "feed_forward.w1.weight"].T)
        x = x + (gate * (h @ sd[p + "feed_forward.w3.weight"].T)) @ sd[p + "feed_forward.w2.weight"].T
    x = rms_norm(x, sd["norm.weight"], eps)
    return x @ sd["output.weight"].T
