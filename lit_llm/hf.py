"""Hugging Face interop: export to / import from the `LlamaForCausalLM` checkpoint layout.

Only ``json`` and ``safetensors`` are used at runtime (``transformers`` is a test-only dependency). Loading never
unpickles anything: a directory holding only ``pytorch_model.bin`` is refused.

Deliberate simplifications:
- Only Llama-compatible configs are accepted (no biases, SiLU, no sliding window, head_dim = hidden/heads, RoPE
  scaling none/linear/dynamic). Anything else raises ``ValueError`` naming the offending field.
- Weights are always exported as float32 (``torch_dtype`` float32 in config.json); import casts to float32.
- The tokenizer is optional on both sides (saved / loaded through ``lit_llm.tokenizer.Tokenizer``). A loaded
  tokenizer with more ids than the embedding has rows is refused, naming the ids (and tokens) without a row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lit_llm.model import ModelConfig, Transformer
from lit_llm.tokenizer import Tokenizer

_LAYER_NAMES = {  # ours (inside blocks.{i}.) -> HF (inside model.layers.{i}.)
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_SUPPORTED_ROPE = ("default", "linear", "dynamic")


def hf_param_names(config: ModelConfig) -> dict[str, str]:
    """Map every parameter name of ``Transformer(config)`` to its HF Llama name (lm_head only when untied)."""
    names = dict(_TOP_NAMES)
    for i in range(config.n_layer):
        for ours, theirs in _LAYER_NAMES.items():
            names[f"blocks.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


# ----------------------------------------------------------------------------------------------------------------
# Config conversion
# ----------------------------------------------------------------------------------------------------------------


def config_to_hf(config: ModelConfig, **token_ids: Any) -> dict:
    """HF ``LlamaConfig``-style dict for ``config``.

    Args:
        config: Our model config.
        **token_ids: Optional ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (int, list or None).
    """
    rope_scaling = None
    if config.rope_scaling is not None:
        kind = config.rope_scaling["type"]
        # both keys: "rope_type" for recent transformers, "type" for older readers
        rope_scaling = {"rope_type": kind, "type": kind, "factor": config.rope_scaling["factor"]}
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "float32",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ff_dim,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    unknown = sorted(set(token_ids) - {"bos_token_id", "eos_token_id", "pad_token_id"})
    if unknown:
        raise TypeError(f"config_to_hf got unexpected keyword arguments {unknown}")
    hf.update(token_ids)
    return hf


def _check_llama_compatible(cfg: dict) -> None:
    """Raise ValueError naming the first field that our architecture cannot represent."""
    model_type = cfg.get("model_type")
    if model_type != "llama":
        raise ValueError(f"unsupported model_type {model_type!r}: only 'llama' checkpoints can be imported")
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    if any(a != "LlamaForCausalLM" for a in archs):
        raise ValueError(f"unsupported architectures {archs}: only ['LlamaForCausalLM'] can be imported")
    if cfg.get("attention_bias", False):
        raise ValueError("unsupported attention_bias=True: our attention projections have no bias")
    if cfg.get("mlp_bias", False):
        raise ValueError("unsupported mlp_bias=True: our MLP projections have no bias")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}: only 'silu' (SwiGLU) is implemented")
    if cfg.get("sliding_window") is not None:
        raise ValueError(f"unsupported sliding_window={cfg['sliding_window']}: only full attention is implemented")
    head_dim = cfg.get("head_dim")
    expected = cfg["hidden_size"] // cfg["num_attention_heads"]
    if head_dim is not None and head_dim != expected:
        raise ValueError(f"unsupported head_dim={head_dim}: must equal hidden_size / num_attention_heads = {expected}")
    if cfg.get("pretraining_tp", 1) not in (1, None):
        raise ValueError(f"unsupported pretraining_tp={cfg['pretraining_tp']}: only 1 is supported")


def _rope_from_hf(cfg: dict) -> tuple[float, dict | None]:
    """(rope_theta, our rope_scaling) from legacy rope_theta / rope_scaling or transformers>=5 rope_parameters."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in _SUPPORTED_ROPE:
        raise ValueError(f"unsupported rope_scaling type {kind!r}: only {list(_SUPPORTED_ROPE)} are implemented")
    if kind == "default":
        return float(theta), None
    return float(theta), {"type": kind, "factor": float(scaling["factor"])}


def config_from_hf(cfg: dict) -> ModelConfig:
    """Our ModelConfig from an HF Llama config dict; ValueError for anything not Llama-compatible."""
    _check_llama_compatible(cfg)
    rope_base, rope_scaling = _rope_from_hf(cfg)
    return ModelConfig(
        vocab_size=cfg["vocab_size"],
        n_layer=cfg["num_hidden_layers"],
        n_head=cfg["num_attention_heads"],
        n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        d_model=cfg["hidden_size"],
        d_ff=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 2048),
        rope_base=rope_base,
        rope_scaling=rope_scaling,
        norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # LlamaConfig's default is untied
    )


# ----------------------------------------------------------------------------------------------------------------
# Export / import
# ----------------------------------------------------------------------------------------------------------------


def _token_ids(tokenizer: Tokenizer | None) -> tuple[dict, dict]:
    """(config.json token ids, generation_config.json token ids) from the tokenizer (all None without one)."""
    if tokenizer is None:
        ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
        return ids, dict(ids)
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    gen = dict(ids)
    stops = tokenizer.chat_stop_ids() if hasattr(tokenizer, "chat_stop_ids") else []
    if len(stops) > 1:  # chat models stop at end-of-turn as well as eos
        gen["eos_token_id"] = list(stops)
    return ids, gen


def export_hf(model: Transformer, tokenizer: Tokenizer | None, out_dir: str | Path) -> Path:
    """Write an HF ``LlamaForCausalLM`` directory: config.json, model.safetensors, generation_config.json, tokenizer.

    Args:
        model: The model to export (its LM-head tying decides whether lm_head.weight is written).
        tokenizer: Tokenizer saved beside the weights (tokenizer.json + tokenizer_config.json); None skips it.
        out_dir: Output directory (created if missing).

    Returns:
        The output directory as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_ids, gen_ids = _token_ids(tokenizer)
    _write_json(out / "config.json", config_to_hf(model.config, **config_ids))
    _write_json(out / "generation_config.json", gen_ids)
    ours = model.state_dict()
    # float32 contiguous copies (config.json says float32); a tied weight is written once, as the embedding
    names = hf_param_names(model.config)
    tensors = {hf: ours[name].detach().to("cpu", torch.float32).contiguous().clone() for name, hf in names.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    _readable_like_the_rest(out / "model.safetensors")
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def _readable_like_the_rest(path: Path) -> None:
    """safetensors writes through a private temporary file (mode 0600); give the weights the mode every other file
    of the export gets (0666 less the umask, usually 0644), so whoever can read the folder can load the model."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded (index.json) safetensors checkpoint; refuses pickle checkpoints."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(str(directory / shard)))
        return tensors
    if any(directory.glob("pytorch_model*.bin")):
        raise ValueError(
            f"{directory} only has pytorch_model*.bin (pickle) weights; refusing to load them because unpickling can "
            "execute code. Convert to safetensors first (e.g. save_pretrained(..., safe_serialization=True))."
        )
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {directory}")


def _state_dict_from_hf(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename HF tensors to our names; error on missing weights, ignore rotary buffers and a redundant tied head."""
    names = hf_param_names(config)
    missing = sorted(hf for hf in names.values() if hf not in tensors)
    if missing:
        raise ValueError(f"checkpoint is missing weights: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    ignorable = {"lm_head.weight"} if config.tie_embeddings else set()
    unexpected = sorted(
        k for k in set(tensors) - set(names.values()) if k not in ignorable and not k.endswith("rotary_emb.inv_freq")
    )
    if unexpected:
        raise ValueError(f"checkpoint has weights this architecture cannot use: {unexpected[:5]}")
    return {ours: tensors[hf] for ours, hf in names.items()}


def load_hf(directory: str | Path) -> tuple[Transformer, Tokenizer | None]:
    """Load an HF Llama-compatible directory (config.json + safetensors [+ tokenizer.json]) as float32 modules.

    Args:
        directory: A directory written by ``export_hf`` or by transformers' ``save_pretrained``.

    Returns:
        (model in eval mode, Tokenizer or None when the directory has no tokenizer.json).
    """
    directory = Path(directory)
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    model = Transformer(config)
    state = _state_dict_from_hf(_read_safetensors(directory), config)
    # strict=False because a tied lm_head.weight is the embedding itself; every other name is checked above
    result = model.load_state_dict(state, strict=False)
    assert set(result.missing_keys) <= {"lm_head.weight"} and not result.unexpected_keys, result
    model.eval()
    tokenizer = None
    if (directory / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        _check_vocab(tokenizer, config, directory)
    return model, tokenizer


def _check_vocab(tokenizer: Tokenizer, config: ModelConfig, directory: Path) -> None:
    """Every token id needs an embedding row (an embedding padded past the tokenizer's ids is fine)."""
    if tokenizer.vocab_size > config.vocab_size:
        extra = [tokenizer.backend.id_to_token(i) for i in range(config.vocab_size, tokenizer.vocab_size)]
        raise ValueError(f"{directory}: tokenizer.json has {tokenizer.vocab_size} tokens but config.json's vocab_size "
                         f"is {config.vocab_size}: ids {config.vocab_size}..{tokenizer.vocab_size - 1} "
                         f"({', '.join(map(repr, extra[:4]))}{' ...' if len(extra) > 4 else ''}) have no embedding")
