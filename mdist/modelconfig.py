"""The Mistral architecture's hyper-parameters, read from `params.json` or HF `config.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mdist.errors import InputError

DEFAULT_ROPE_THETA = 10000.0  # Mistral 7B v0.1's params.json has no key; its code used 10000.


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

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "head_dim", "hidden_dim", "n_heads", "n_kv_heads", "vocab_size"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise InputError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise InputError("model config: n_heads must be a multiple of n_kv_heads")
        if self.head_dim % 2:
            raise InputError("model config: head_dim must be even for rotary embeddings")
        if self.sliding_window is not None and (type(self.sliding_window) is not int or self.sliding_window <= 0):
            raise InputError("model config: sliding_window must be a positive integer or absent")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise InputError("model config: norm_eps must be a positive number")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise InputError("model config: rope_theta must be a positive number")

    # -- Mistral's params.json ---------------------------------------------------------------
    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "MistralConfig":
        if not isinstance(params, dict):
            raise InputError("params.json must hold a JSON object")
        try:
            dim, n_heads = params["dim"], params["n_heads"]
            return cls(
                dim=dim,
                n_layers=params["n_layers"],
                head_dim=params.get("head_dim", dim // n_heads if isinstance(dim, int) and isinstance(n_heads, int) and n_heads else 0),
                hidden_dim=params["hidden_dim"],
                n_heads=n_heads,
                n_kv_heads=params.get("n_kv_heads", n_heads),
                norm_eps=params["norm_eps"],
                vocab_size=params["vocab_size"],
                sliding_window=params.get("sliding_window"),
                rope_theta=params.get("rope_theta", DEFAULT_ROPE_THETA),
            )
        except KeyError as exc:
            raise InputError(f"params.json lacks the key {exc.args[0]!r}") from None

    def to_params(self) -> dict[str, Any]:
        params = asdict(self)
        if params["sliding_window"] is None:
            del params["sliding_window"]
        return params

    # -- Hugging Face config.json ------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> "MistralConfig":
        if not isinstance(config, dict):
            raise InputError("config.json must hold a JSON object")
        architectures = config.get("architectures") or []
        if config.get("model_type") != "mistral" and "MistralForCausalLM" not in architectures:
            raise InputError(
                f"unsupported architecture {config.get('model_type') or architectures!r}: mdist runs Mistral models"
            )
        rope = config.get("rope_parameters") or {}
        try:
            dim, n_heads = config["hidden_size"], config["num_attention_heads"]
            return cls(
                dim=dim,
                n_layers=config["num_hidden_layers"],
                head_dim=config.get("head_dim") or (dim // n_heads if isinstance(dim, int) and isinstance(n_heads, int) and n_heads else 0),
                hidden_dim=config["intermediate_size"],
                n_heads=n_heads,
                n_kv_heads=config.get("num_key_value_heads") or n_heads,
                norm_eps=config.get("rms_norm_eps", 1e-6),
                vocab_size=config["vocab_size"],
                sliding_window=config.get("sliding_window"),
                rope_theta=config.get("rope_theta") or rope.get("rope_theta") or DEFAULT_ROPE_THETA,
            )
        except KeyError as exc:
            raise InputError(f"config.json lacks the key {exc.args[0]!r}") from None

    def to_hf_config(self) -> dict[str, Any]:
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


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None


def load_config(directory: Path) -> tuple[MistralConfig, str]:
    """Read a model folder's config; return it with the layout it implies ('mistral' or 'hf')."""
    directory = Path(directory)
    if (directory / "params.json").is_file():
        return MistralConfig.from_params(read_json(directory / "params.json")), "mistral"
    if (directory / "config.json").is_file():
        return MistralConfig.from_hf_config(read_json(directory / "config.json")), "hf"
    raise InputError(f"{directory} has neither params.json nor config.json")
