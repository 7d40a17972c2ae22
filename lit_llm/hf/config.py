"""Model families: a Hugging Face `config.json` to our `ModelConfig` and back.

One decoder covers the families users fine-tune (LitGPT's way: flags, not subclasses):

    llama    Llama-2, Llama-3.x (rope_type llama3), SmolLM, TinyLlama     ModelConfig defaults
    qwen2    Qwen2, Qwen2.5                                               qkv_bias
    qwen3    Qwen3 (dense)                                                qk_norm, head_dim of its own
    mistral  Mistral                                                      sliding_window (when set)

Anything else (MoE, biases on other projections, other activations, YaRN or partial rotary, Qwen's per-layer
sliding windows) is refused with an error naming the config field, before any weight is read.
"""

from __future__ import annotations

from typing import Any

from lit_llm.model import ModelConfig
from lit_llm.rope import LLAMA3_KEYS

FAMILIES = {  # model_type -> the architecture transformers builds
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}
SUPPORTED_ROPE = ("default", "linear", "dynamic", "llama3")
# config.json fields whose presence with a true value means an architecture we do not implement
REFUSED_FIELDS = {
    "num_local_experts": "mixture of experts", "num_experts": "mixture of experts",
    "moe_intermediate_size": "mixture of experts", "attn_logit_softcapping": "attention softcapping",
    "final_logit_softcapping": "logit softcapping", "partial_rotary_factor": "partial rotary embeddings",
    "mlp_bias": "biases on the MLP projections",
}


def family_of(config: ModelConfig) -> str:
    """The Hugging Face family that represents `config` (the first of qwen3, qwen2, mistral, llama that fits)."""
    if config.qk_norm:
        if config.qkv_bias or config.sliding_window is not None:
            raise ValueError("no Hugging Face family has qk_norm with qkv_bias or a sliding_window")
        return "qwen3"
    if config.qkv_bias:
        if config.sliding_window is not None:
            raise ValueError("no Hugging Face family has qkv_bias with a sliding_window on every layer")
        return "qwen2"
    return "mistral" if config.sliding_window is not None else "llama"


def config_to_hf(config: ModelConfig, dtype: str = "float32", **token_ids: Any) -> dict:
    """The `config.json` dict of `config`'s family.

    Args:
        config: Our model config.
        dtype: The dtype the weights are written in ("float32", "bfloat16", "float16").
        **token_ids: Optional ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (int, list or None).
    """
    unknown = sorted(set(token_ids) - {"bos_token_id", "eos_token_id", "pad_token_id"})
    if unknown:
        raise TypeError(f"config_to_hf got unexpected keyword arguments {unknown}")
    family = family_of(config)
    hf: dict[str, Any] = {
        "architectures": [FAMILIES[family]], "model_type": family, "torch_dtype": dtype, "dtype": dtype,
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "intermediate_size": config.ff_dim,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base, "rope_scaling": rope_scaling_to_hf(config),
        "tie_word_embeddings": config.tie_embeddings, "hidden_act": "silu", "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": True, "bos_token_id": None, "eos_token_id": None,
        "pad_token_id": None,
    }
    if family == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    if family in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.n_layer)
    if family == "qwen3":
        hf["attention_bias"] = False
    if family == "mistral":
        hf["sliding_window"] = config.sliding_window
    hf.update(token_ids)
    return hf


def rope_scaling_to_hf(config: ModelConfig) -> dict | None:
    if config.rope_scaling is None:
        return None
    scaling = dict(config.rope_scaling)
    kind = scaling.pop("type")
    return {"rope_type": kind, "type": kind, **scaling}  # "type" for older readers


def check_supported(cfg: dict) -> str:
    """The family of an HF config dict; ValueError naming the first field our decoder cannot represent."""
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"unsupported model_type {family!r}: lit_llm imports {sorted(FAMILIES)} "
                         f"(Llama-2/3, SmolLM, Qwen2/2.5, Qwen3, Mistral)")
    archs = cfg.get("architectures") or [FAMILIES[family]]
    if any(a != FAMILIES[family] for a in archs):
        raise ValueError(f"unsupported architectures {archs}: a {family} checkpoint must be "
                         f"['{FAMILIES[family]}'] (a causal LM)")
    for field, what in REFUSED_FIELDS.items():
        value = cfg.get(field)
        if (value not in (None, 1.0) if field == "partial_rotary_factor" else bool(value)):
            raise ValueError(f"unsupported {field}={value!r}: {what} is not implemented")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}: only 'silu' (SwiGLU) is implemented")
    if cfg.get("attention_bias", False) and family != "qwen2":
        raise ValueError(f"unsupported attention_bias=True for {family}: only Qwen2's q/k/v biases are implemented "
                         f"(this family would put one on the output projection too)")
    if family in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        raise ValueError("unsupported use_sliding_window=True: Qwen's sliding window on some layers only "
                         "(max_window_layers) is not implemented")
    mixed = sorted({kind for kind in cfg.get("layer_types") or () if kind != "full_attention"})
    if mixed:
        raise ValueError(f"unsupported layer_types with {mixed}: per-layer attention kinds are not implemented "
                         f"(every layer must be 'full_attention')")
    if family == "llama" and cfg.get("pretraining_tp", 1) not in (1, None):
        raise ValueError(f"unsupported pretraining_tp={cfg['pretraining_tp']}: only 1 is supported")
    return family


def rope_from_hf(cfg: dict) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling) from legacy rope_theta / rope_scaling or transformers>=5 rope_parameters."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in SUPPORTED_ROPE:
        raise ValueError(f"unsupported rope_scaling type {kind!r} (rope_scaling.rope_type): only "
                         f"{list(SUPPORTED_ROPE)} are implemented")
    if kind == "default":
        return float(theta), None
    extra = {key: scaling[key] for key in LLAMA3_KEYS if kind == "llama3" and key in scaling}
    return float(theta), {"type": kind, "factor": float(scaling["factor"]), **extra}


def config_from_hf(cfg: dict) -> ModelConfig:
    """Our ModelConfig from an HF config dict of a supported family; ValueError for anything else."""
    family = check_supported(cfg)
    rope_base, rope_scaling = rope_from_hf(cfg)
    n_head = cfg["num_attention_heads"]
    return ModelConfig(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=cfg.get("num_key_value_heads") or n_head,
        d_model=cfg["hidden_size"],
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // n_head,
        d_ff=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # the families' default is untied
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        sliding_window=cfg.get("sliding_window") if family == "mistral" else None,
    )
