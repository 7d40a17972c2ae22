"""Hugging Face interop: import and export of the families in `lit_llm.hf.config` (Llama-2/3, SmolLM, Qwen2/2.5,
Qwen3, Mistral), from a local directory or a hub id.

Only ``json``, ``safetensors`` and ``huggingface_hub`` are used at runtime (``transformers`` is a test-only
dependency). Loading never unpickles anything: a directory holding only ``pytorch_model.bin`` is refused. Weights
keep the dtype they are stored in unless `dtype` says otherwise (cast tensor by tensor while reading); exports
above `max_shard_size` are written as shards with `model.safetensors.index.json`, as `save_pretrained` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lit_llm.hf.config import config_from_hf, config_to_hf, family_of
from lit_llm.hf.hub import looks_like_hub_id, resolve_pretrained
from lit_llm.hf.weights import DTYPES, dtype_of, hf_param_names, read_weights, write_weights
from lit_llm.model import ModelConfig, Transformer
from lit_llm.rope import RotaryEmbedding
from lit_llm.tokenizer import Tokenizer

__all__ = ["config_from_hf", "config_to_hf", "export_hf", "family_of", "hf_param_names", "load_hf",
           "looks_like_hub_id", "resolve_pretrained"]
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def _token_ids(tokenizer: Tokenizer | None) -> tuple[dict, dict]:
    """(config.json token ids, generation_config.json token ids) from the tokenizer (all None without one)."""
    if tokenizer is None:
        ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
        return ids, dict(ids)
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    gen = dict(ids)
    stops = tokenizer.chat_stop_ids()
    if len(stops) > 1:  # chat models stop at end-of-turn as well as eos
        gen["eos_token_id"] = list(stops)
    return ids, gen


def export_hf(model: Transformer, tokenizer: Tokenizer | None, out_dir: str | Path, dtype: str | None = None,
              max_shard_size: int | None = None) -> Path:
    """Write a Hugging Face directory of the model's family: config.json, safetensors weights,
    generation_config.json and the tokenizer.

    Args:
        model: The model to export (its LM-head tying decides whether lm_head.weight is written).
        tokenizer: Tokenizer saved beside the weights (tokenizer.json + tokenizer_config.json); None skips it.
        out_dir: Output directory (created if missing).
        dtype: "float32", "bfloat16" or "float16"; None keeps the model's own dtype.
        max_shard_size: Bytes per weights file at most; larger models are written as shards plus
            `model.safetensors.index.json`. None writes one file.

    Returns:
        The output directory as a Path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = dtype_of(dtype) or next(model.parameters()).dtype
    config_ids, gen_ids = _token_ids(tokenizer)
    _write_json(out / "config.json", config_to_hf(model.config, DTYPE_NAMES[torch_dtype], **config_ids))
    _write_json(out / "generation_config.json", gen_ids)
    ours = model.state_dict()
    # contiguous copies in the dtype config.json names; a tied weight is written once, as the embedding
    tensors = {hf: ours[name].detach().to("cpu", torch_dtype).contiguous().clone()
               for name, hf in hf_param_names(model.config).items()}
    write_weights(tensors, out, max_shard_size)
    if tokenizer is not None:
        tokenizer.save(out)
    return out


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_hf(source: str | Path, dtype: str | torch.dtype | None = None) -> tuple[Transformer, Tokenizer | None]:
    """Load a Hugging Face directory or hub id of a supported family (config.json + safetensors [+ tokenizer]).

    Args:
        source: A directory written by ``export_hf`` or ``save_pretrained``, or a hub id (`hf:Qwen/Qwen2.5-0.5B`,
            or `Qwen/Qwen2.5-0.5B` when no such local path exists), downloaded into the hub cache.
        dtype: The weights' dtype in memory: None keeps the stored one; "float32", "bfloat16", "float16".

    Returns:
        (model in eval mode, Tokenizer or None when the directory has no tokenizer.json).
    """
    directory = resolve_pretrained(source)
    config = config_from_hf(json.loads((directory / "config.json").read_text()))
    names = hf_param_names(config)
    tensors = read_weights(directory, set(names.values()), dtype_of(dtype))
    model = _assemble(config, {ours: tensors.pop(theirs) for ours, theirs in names.items()})
    tokenizer = None
    if (directory / "tokenizer.json").exists():
        tokenizer = Tokenizer.from_file(directory / "tokenizer.json")
        _check_vocab(tokenizer, config, directory)
    return model.eval(), tokenizer


def _assemble(config: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer holding exactly `state`'s tensors (no initialised copy: built on the meta device)."""
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, strict=False, assign=True)
    model.rope = RotaryEmbedding(config)  # its buffer is computed, not stored
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    left = [name for name, p in model.named_parameters() if p.is_meta]
    assert not left, left  # every name was checked by read_weights
    return model


def _check_vocab(tokenizer: Tokenizer, config: ModelConfig, directory: Path) -> None:
    """Every token id needs an embedding row (an embedding padded past the tokenizer's ids is fine)."""
    if tokenizer.vocab_size > config.vocab_size:
        extra = [tokenizer.backend.id_to_token(i) for i in range(config.vocab_size, tokenizer.vocab_size)]
        raise ValueError(f"{directory}: tokenizer.json has {tokenizer.vocab_size} tokens but config.json's vocab_size "
                         f"is {config.vocab_size}: ids {config.vocab_size}..{tokenizer.vocab_size - 1} "
                         f"({', '.join(map(repr, extra[:4]))}{' ...' if len(extra) > 4 else ''}) have no embedding")

