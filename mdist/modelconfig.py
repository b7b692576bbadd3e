"""The Mistral architecture's hyper-parameters, read from `params.json` or HF `config.json`.

Both files come from outside: every value used is checked for type (bool is not an int, NaN is
not a number) and for an upper bound before anything is sized by it, so a hostile file is one
line of error instead of a multi-gigabyte allocation. Keys mdist does not use (`max_seq_len`,
...) are ignored. A `moe` block (Mixtral) makes the feed-forward a mixture of experts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from mdist.errors import InputError
from mdist.jsonio import read_json_file

DEFAULT_ROPE_THETA = 10000.0  # Mistral 7B v0.1's params.json has no key; its code used 10000.
# Mixtral 8x7B's params.json has no rope_theta either; its value is 1e6 (transformers' config of
# mistralai/Mixtral-8x7B-v0.1; llama.cpp's converter sets 1e6 when `moe` is present).
DEFAULT_MOE_ROPE_THETA = 1e6
MAX_EXPERTS = 256  # Mixtral has 8; far above any published mixture, far below what exhausts memory

# Upper bounds, each far above any published Mistral model (Mistral Large 2: dim 12288, 88 layers,
# 96 heads of 128, hidden 28672, vocab 32768; NeMo: vocab 131072), far below what exhausts memory.
# In this order, so an error names the first bad key (head_dim's default derives from dim, n_heads).
LIMITS = {
    "dim": 1 << 16,
    "n_layers": 1 << 10,
    "n_heads": 1 << 10,
    "n_kv_heads": 1 << 10,
    "head_dim": 1 << 10,
    "hidden_dim": 1 << 20,
    "vocab_size": 1 << 21,
}
MAX_ATTENTION_WIDTH = 1 << 16  # n_heads * head_dim, the width of the q projection: bounded like dim
MAX_SLIDING_WINDOW = 1 << 31  # the runner's cache is min(window, context), so this only bounds arithmetic
MAX_ROPE_THETA = 1e12  # published values reach 1e9 (Mistral Small 3.1); a bound keeps the rotary math finite
MAX_NORM_EPS = 1.0  # RMSNorm's epsilon is ~1e-5; a value near 1 would swamp the activations


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON true/false are bools, not dimensions


def _is_real(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # NaN and Infinity parse from JSON


def _show(value: Any) -> str:
    """A value from the file for a one-line message (a huge string or list is cut)."""
    return repr(value)[:60]


def _default_head_dim(dim: Any, n_heads: Any) -> Any:
    """dim // n_heads where both are usable; else dim, so the bad key itself is named first."""
    return dim // n_heads if _is_int(dim) and _is_int(n_heads) and n_heads > 0 else dim


@dataclass(frozen=True)
class MistralConfig:
    dim: int
    n_layers: int
    head_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    norm_eps: float
    vocab_size: int
    sliding_window: int | None = None
    rope_theta: float = DEFAULT_ROPE_THETA
    n_experts: int = 0  # 0: a dense feed-forward (Mistral); else a mixture of experts (Mixtral)
    n_experts_per_tok: int = 0

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def __post_init__(self) -> None:
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if not _is_int(value) or not 0 < value <= limit:
                raise InputError(f"model config: {name} must be an integer in 1..{limit}, got {_show(value)}")
        if self.n_heads % self.n_kv_heads:
            raise InputError("model config: n_heads must be a multiple of n_kv_heads")
        if self.head_dim % 2:
            raise InputError("model config: head_dim must be even for rotary embeddings")
        if self.n_heads * self.head_dim > MAX_ATTENTION_WIDTH:
            raise InputError(f"model config: n_heads * head_dim must be at most {MAX_ATTENTION_WIDTH}")
        window = self.sliding_window
        if window is not None and (not _is_int(window) or not 0 < window <= MAX_SLIDING_WINDOW):
            raise InputError(f"model config: sliding_window must be absent or an integer in 1..{MAX_SLIDING_WINDOW}")
        if not (_is_real(self.norm_eps) and 0 < self.norm_eps <= MAX_NORM_EPS):
            raise InputError(f"model config: norm_eps must be a number in (0, {MAX_NORM_EPS}], got {_show(self.norm_eps)}")
        if not (_is_real(self.rope_theta) and 0 < self.rope_theta <= MAX_ROPE_THETA):
            raise InputError(f"model config: rope_theta must be a number in (0, {MAX_ROPE_THETA:g}], got {_show(self.rope_theta)}")
        dense = _is_int(self.n_experts) and _is_int(self.n_experts_per_tok) and self.n_experts == self.n_experts_per_tok == 0
        if not dense:
            if not _is_int(self.n_experts) or not 1 <= self.n_experts <= MAX_EXPERTS:
                raise InputError(f"model config: the number of experts must be an integer in 1..{MAX_EXPERTS}, "
                                 f"got {_show(self.n_experts)}")
            if not _is_int(self.n_experts_per_tok) or not 1 <= self.n_experts_per_tok <= self.n_experts:
                raise InputError(f"model config: experts per token must be an integer in 1..{self.n_experts}, "
                                 f"got {_show(self.n_experts_per_tok)}")

    # -- Mistral's params.json ---------------------------------------------------------------
    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "MistralConfig":
        if not isinstance(params, dict):
            raise InputError("params.json must hold a JSON object")
        _refuse_other_architecture(params, "params.json")
        moe = params.get("moe")
        if moe is not None and not isinstance(moe, dict):
            raise InputError("params.json: moe must be an object")
        if moe is not None and moe.get("num_experts") == 0:  # would pass as dense, with Mixtral's rope_theta
            raise InputError("params.json: moe must name at least one expert, got num_experts 0")
        try:
            dim, n_heads = params["dim"], params["n_heads"]
            return cls(
                dim=dim,
                n_layers=params["n_layers"],
                head_dim=params.get("head_dim", _default_head_dim(dim, n_heads)),
                hidden_dim=params["hidden_dim"],
                n_heads=n_heads,
                n_kv_heads=params.get("n_kv_heads", n_heads),
                norm_eps=params["norm_eps"],
                vocab_size=params["vocab_size"],
                sliding_window=params.get("sliding_window"),
                rope_theta=params.get("rope_theta", DEFAULT_MOE_ROPE_THETA if moe is not None else DEFAULT_ROPE_THETA),
                **({} if moe is None else {"n_experts": moe["num_experts"],
                                           "n_experts_per_tok": moe["num_experts_per_tok"]}),
            )
        except KeyError as exc:
            raise InputError(f"params.json lacks the key {exc.args[0]!r}") from None

    def to_params(self) -> dict[str, Any]:
        params = asdict(self)
        if params["sliding_window"] is None:
            del params["sliding_window"]
        del params["n_experts"], params["n_experts_per_tok"]
        if self.is_moe:
            params["moe"] = {"num_experts_per_tok": self.n_experts_per_tok, "num_experts": self.n_experts}
        return params

    # -- Hugging Face config.json ------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> "MistralConfig":
        if not isinstance(config, dict):
            raise InputError("config.json must hold a JSON object")
        architectures, model_type = config.get("architectures") or [], config.get("model_type")
        if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
            raise InputError("config.json: architectures must be a list of strings")
        if model_type is not None and not isinstance(model_type, str):
            raise InputError("config.json: model_type must be a string")
        moe = model_type == "mixtral" or "MixtralForCausalLM" in architectures
        if not moe and model_type != "mistral" and "MistralForCausalLM" not in architectures:
            raise InputError(f"unsupported architecture {_show(model_type or architectures)}: mdist runs Mistral "
                             f"and Mixtral models")
        rope = config.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            raise InputError("config.json: rope_parameters must be an object")
        try:
            dim, n_heads = config["hidden_size"], config["num_attention_heads"]
            return cls(
                dim=dim,
                n_layers=config["num_hidden_layers"],
                head_dim=_given(config, "head_dim", _default_head_dim(dim, n_heads)),
                hidden_dim=config["intermediate_size"],
                n_heads=n_heads,
                n_kv_heads=_given(config, "num_key_value_heads", n_heads),
                norm_eps=config.get("rms_norm_eps", 1e-6),
                vocab_size=config["vocab_size"],
                sliding_window=config.get("sliding_window"),
                rope_theta=_given(config, "rope_theta", _given(rope, "rope_theta", DEFAULT_ROPE_THETA)),
                **({} if not moe else {"n_experts": config["num_local_experts"],
                                       "n_experts_per_tok": config["num_experts_per_tok"]}),
            )
        except KeyError as exc:
            raise InputError(f"config.json lacks the key {exc.args[0]!r}") from None

    def to_hf_config(self) -> dict[str, Any]:
        config = self._to_hf_common()
        if self.is_moe:  # transformers' MixtralConfig; experts stored per expert (w1, w2, w3)
            config.update({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
                           "num_local_experts": self.n_experts, "num_experts_per_tok": self.n_experts_per_tok,
                           "output_router_logits": False, "router_aux_loss_coef": 0.02, "router_jitter_noise": 0.0})
        return config

    def _to_hf_common(self) -> dict[str, Any]:
        return {
            "architectures": ["MistralForCausalLM"],
            "model_type": "mistral",
            "hidden_size": self.dim,
            "intermediate_size": self.hidden_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.norm_eps,
            "vocab_size": self.vocab_size,
            "sliding_window": self.sliding_window,
            "rope_theta": float(self.rope_theta),
            "rope_parameters": {"rope_type": "default", "rope_theta": float(self.rope_theta)},
            "max_position_embeddings": 32768,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "use_cache": True,
            "torch_dtype": "bfloat16",
        }


def _given(config: dict[str, Any], key: str, default: Any) -> Any:
    """The file's value when it has one (even 0 or false, which the checks then refuse), else the
    default: `config.get(key) or default` would quietly replace a 0 by the default."""
    value = config.get(key)
    return default if value is None else value


def _refuse_other_architecture(params: dict[str, Any], where: str) -> None:
    """A release that is not the Mistral transformer (Codestral Mamba is a Mamba 2 model): one
    clear line instead of "lacks the key n_heads"."""
    model_type = params.get("model_type")
    if (isinstance(model_type, str) and "mamba" in model_type.lower()) or (
            "n_heads" not in params and ("n_groups" in params or "ssm_cfg" in params)):
        raise InputError(f"{where}: a state-space (Mamba) model, not the Mistral transformer architecture; "
                         f"mdist can fetch, verify and digest it but not run or convert it to another layout")


def read_json(path: Path) -> Any:
    """A small JSON file from outside: bounded, regular files only, errors as one line."""
    return read_json_file(Path(path))


def check_tensor_shapes(shapes: Mapping[str, tuple[int, ...]], c: MistralConfig) -> None:
    """The tensors (Mistral names) are exactly what the config describes, each of its shape: what
    `run` loads and what `convert` writes for transformers or llama.cpp, which would fail later
    and less clearly on a file that is not."""
    expected = {
        "tok_embeddings.weight": (c.vocab_size, c.dim),
        "norm.weight": (c.dim,),
        "output.weight": (c.vocab_size, c.dim),
    }
    for layer in range(c.n_layers):
        p = f"layers.{layer}."
        expected.update({
            p + "attention.wq.weight": (c.n_heads * c.head_dim, c.dim),
            p + "attention.wk.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "attention.wv.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "attention.wo.weight": (c.dim, c.n_heads * c.head_dim),
            p + "attention_norm.weight": (c.dim,),
            p + "ffn_norm.weight": (c.dim,),
        })
        ffn = [p + "feed_forward."]
        if c.is_moe:
            expected[p + "feed_forward.gate.weight"] = (c.n_experts, c.dim)
            ffn = [f"{p}feed_forward.experts.{e}." for e in range(c.n_experts)]
        for f in ffn:
            expected.update({f + "w1.weight": (c.hidden_dim, c.dim), f + "w2.weight": (c.dim, c.hidden_dim),
                             f + "w3.weight": (c.hidden_dim, c.dim)})
    moe_weights = any(".feed_forward.experts." in name or name.endswith(".feed_forward.gate.weight") for name in shapes)
    if moe_weights != c.is_moe:
        raise InputError("the weights are a mixture of experts but the config has no `moe` block (params.json) or "
                         "num_local_experts (config.json)" if moe_weights else
                         f"the config says {c.n_experts} experts but the weights have a dense feed-forward")
    experts = f" (the config says {c.n_experts} experts)" if c.is_moe else ""
    router = shapes.get("layers.0.feed_forward.gate.weight")
    if c.is_moe and router is not None and len(router) == 2 and router[0] != c.n_experts:
        raise InputError(f"the config says {c.n_experts} experts but the weights hold {router[0]} "
                         f"(layers.0.feed_forward.gate.weight routes to {router[0]})")
    for name, shape in expected.items():
        if name not in shapes:
            raise InputError(f"weights lack tensor {name}{experts}")
        if tuple(shapes[name]) != shape:
            raise InputError(f"tensor {name} has shape {tuple(shapes[name])}, config implies {shape}")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise InputError(f"weights hold tensors the config does not explain, e.g. {extra[0]}{experts}")
