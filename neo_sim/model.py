"""ModelSpec: the layer dimensions of a Llama-family model and what follows from them.

The cost model needs bytes and FLOPs per token of each stage; the engine needs the shapes of
its weights; the KV pools need bytes per token. All of that derives from a handful of numbers
in an HF `config.json`, which is what `ModelSpec` holds.

Model names are shared by every tool: a preset name (`llama-2-7b`), a path to a `config.json`
or to a checkpoint directory, or `dummy:NAME` (the preset NAME with random weights, the engine's
form; the simulator treats it as NAME).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from neo_sim.errors import NeoError
from neo_sim.files import read_json_object
from neo_sim.units import canonical_dtype, dtype_bytes


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions of a Llama-family decoder (RMSNorm, RoPE, GQA attention, gated MLP)."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = 4096
    head_dim: int = 0  # 0 means hidden_size // num_heads
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=True)
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    dtype: str = "float16"  # weights and activations
    kv_dtype: str = ""  # "" means same as dtype
    qkv_bias: bool = False  # Qwen2: the q, k, v projections carry biases
    sliding_window: int | None = None  # Mistral: attention sees only this many past tokens

    def __post_init__(self) -> None:
        for name in (
            "num_layers",
            "hidden_size",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise NeoError(
                    f"model {self.name!r}: {name} must be a positive integer, got {value!r}"
                )
        if self.num_heads % self.num_kv_heads:
            raise NeoError(
                f"model {self.name!r}: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim == 0:
            if self.hidden_size % self.num_heads:
                raise NeoError(
                    f"model {self.name!r}: hidden_size {self.hidden_size} is not divisible by "
                    f"num_heads {self.num_heads}; give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        object.__setattr__(self, "kv_dtype", canonical_dtype(self.kv_dtype or self.dtype))

    # ---- shapes -------------------------------------------------------------------------
    @cached_property
    def q_size(self) -> int:
        """Width of the query projection (num_heads * head_dim)."""
        return self.num_heads * self.head_dim

    @cached_property
    def kv_size(self) -> int:
        """Width of one of the key/value projections (num_kv_heads * head_dim)."""
        return self.num_kv_heads * self.head_dim

    @cached_property
    def dtype_bytes(self) -> int:
        return dtype_bytes(self.dtype)

    @cached_property
    def kv_dtype_bytes(self) -> int:
        return dtype_bytes(self.kv_dtype)

    # ---- parameters and bytes -------------------------------------------------------------
    @cached_property
    def linear_params_per_layer(self) -> int:
        """Weights of the GEMMs of one layer: QKV, O, gate/up/down."""
        h = self.hidden_size
        return (
            h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * self.intermediate_size
        )

    @cached_property
    def num_params(self) -> int:
        embed = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_word_embeddings else embed
        norms = self.num_layers * 2 * self.hidden_size + self.hidden_size
        return self.num_layers * self.linear_params_per_layer + embed + lm_head + norms

    @cached_property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    @cached_property
    def linear_weight_bytes_per_layer(self) -> int:
        return self.linear_params_per_layer * self.dtype_bytes

    @cached_property
    def kv_bytes_per_token_per_layer(self) -> int:
        """K and V of one token in one layer."""
        return 2 * self.kv_size * self.kv_dtype_bytes

    @cached_property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token across all layers: the unit of KV-cache capacity."""
        return self.num_layers * self.kv_bytes_per_token_per_layer

    # ---- FLOPs ---------------------------------------------------------------------------
    @cached_property
    def linear_flops_per_token_per_layer(self) -> int:
        """Multiply-adds count twice: 2 FLOPs per weight per token."""
        return 2 * self.linear_params_per_layer

    @cached_property
    def attn_flops_per_query_key(self) -> int:
        """FLOPs of one (query token, cached token) pair in one layer: QK^T and PV."""
        return 4 * self.q_size

    @cached_property
    def lm_head_flops_per_token(self) -> int:
        return 2 * self.vocab_size * self.hidden_size

    @cached_property
    def lm_head_weight_bytes(self) -> int:
        return self.vocab_size * self.hidden_size * self.dtype_bytes

    # ---- conversions ---------------------------------------------------------------------
    def with_dtype(self, dtype: str, kv_dtype: str | None = None) -> ModelSpec:
        """The same model computed in another dtype (the engine runs fp32 on this CPU)."""
        return dataclasses.replace(self, dtype=dtype, kv_dtype=kv_dtype or dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise NeoError(f"{where}: unknown model field(s) {sorted(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise NeoError(f"{where}: {exc}") from None

    def to_hf_config(self) -> dict[str, Any]:
        """An HF LlamaConfig dict, so that transformers can build the same model."""
        config = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": self.dtype,
        }
        if self.rope_scaling:
            config["rope_scaling"] = dict(self.rope_scaling)
        return config

    @classmethod
    def from_hf_config(
        cls, source: str | Path | dict[str, Any], name: str | None = None
    ) -> ModelSpec:
        """Read an HF `config.json` (a path to it, to its directory, or the parsed dict)."""
        if isinstance(source, dict):
            config, where = source, name or "config"
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            if not path.is_file():
                raise NeoError(f"{source}: no config.json there (expected an HF Llama checkpoint)")
            config = read_json_object(path, "an HF config")
            where = str(path)
            name = name or path.parent.name
        model_type = config.get("model_type", "llama")
        if model_type not in ("llama", "mistral", "smollm", "qwen2"):
            raise NeoError(f"{where}: model_type {model_type!r} is not a Llama-family model")
        required = [
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
            "vocab_size",
        ]
        missing = [key for key in required if key not in config]
        if missing:
            raise NeoError(f"{where}: missing field(s) {missing}")
        # transformers >= 5 nests RoPE settings under "rope_parameters"; older configs do not.
        rope = config.get("rope_parameters") or {}
        rope_theta = config.get("rope_theta", rope.get("rope_theta", 10000.0))
        rope_scaling = config.get("rope_scaling")
        if rope_scaling is None and rope.get("rope_type", "default") != "default":
            rope_scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        dtype = config.get("torch_dtype") or config.get("dtype") or "float16"
        if dtype not in ("float32", "float16", "bfloat16"):
            dtype = "float16"
        # Qwen2's q/k/v projections have biases (its O projection has none).
        qkv_bias = model_type == "qwen2"
        for flag in ("attention_bias", "mlp_bias"):
            if config.get(flag) and model_type != "qwen2":
                raise NeoError(f"{where}: {flag} (biased projections) is not supported")
        window = config.get("sliding_window")
        if model_type == "qwen2" and not config.get("use_sliding_window", False):
            window = None  # Qwen2 configs carry a window that is off unless this says so
        return cls(
            name=name or "model",
            num_layers=config["num_hidden_layers"],
            hidden_size=config["hidden_size"],
            num_heads=config["num_attention_heads"],
            num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            intermediate_size=config["intermediate_size"],
            vocab_size=config["vocab_size"],
            max_position_embeddings=config.get("max_position_embeddings", 4096),
            head_dim=config.get("head_dim") or 0,
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            dtype=dtype,
            qkv_bias=qkv_bias,
            sliding_window=int(window) if window else None,
        )


# Llama-3.1's RoPE scaling (HF config of Llama-3.1-8B/70B).
_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# Dimensions from each model's published HF config.json.
PRESETS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        ModelSpec("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        ModelSpec("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, rope_theta=500000.0),
        ModelSpec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, rope_theta=500000.0),
        ModelSpec(
            "llama-3.1-8b",
            32,
            4096,
            32,
            8,
            14336,
            128256,
            131072,
            rope_theta=500000.0,
            rope_scaling=_LLAMA31_ROPE,
        ),
        ModelSpec(
            "llama-3.1-70b",
            80,
            8192,
            64,
            8,
            28672,
            128256,
            131072,
            rope_theta=500000.0,
            rope_scaling=_LLAMA31_ROPE,
        ),
        # SmolLM2-135M: a real Llama-architecture model small enough to run on 2 CPU cores.
        ModelSpec(
            "smollm2-135m",
            30,
            576,
            9,
            3,
            1536,
            49152,
            8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        ),
        # Test models of our own: `tiny` (~4M parameters), `small` (~100M).
        ModelSpec("tiny", 4, 256, 4, 2, 768, 2048, 2048),
        ModelSpec("small", 12, 768, 12, 4, 2048, 32000, 4096, tie_word_embeddings=True),
    ]
}


@dataclass(frozen=True)
class ModelRef:
    """What a model argument names: the spec, plus where real weights live (if anywhere)."""

    spec: ModelSpec
    checkpoint_dir: Path | None = None  # None: a preset (random weights in the engine)
    dummy: bool = False  # the user asked for random weights explicitly


def parse_model_arg(arg: str) -> ModelRef:
    """Resolve `preset`, `dummy:preset`, `path/to/config.json` or `path/to/checkpoint_dir`."""
    if not arg:
        raise NeoError("empty model name: give a preset, dummy:PRESET or a path")
    if arg.startswith("dummy:"):
        return ModelRef(_preset(arg[len("dummy:") :]), None, dummy=True)
    if arg in PRESETS:
        return ModelRef(PRESETS[arg])
    path = Path(arg)
    if path.exists():
        spec = ModelSpec.from_hf_config(path)
        directory = path if path.is_dir() else path.parent
        return ModelRef(spec, directory)
    raise NeoError(
        f"unknown model {arg!r}: use a preset ({', '.join(PRESETS)}), dummy:PRESET, "
        "or a path to an HF config.json / checkpoint directory"
    )


def resolve_model(arg: str) -> ModelSpec:
    """The ModelSpec a model argument names (the simulator's view: weights do not matter)."""
    return parse_model_arg(arg).spec


def _preset(name: str) -> ModelSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise NeoError(f"unknown model preset {name!r}: use one of {', '.join(PRESETS)}") from None
