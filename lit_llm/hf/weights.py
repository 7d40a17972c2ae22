"""Hugging Face weights: our parameter names to theirs, and safetensors in and out (single file or shards with
`model.safetensors.index.json`), in the dtype asked for. Nothing here unpickles: `pytorch_model*.bin` is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lit_llm.model import ModelConfig

LAYER_NAMES = {  # ours (inside blocks.{i}.) -> HF (inside model.layers.{i}.)
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
QKV_BIAS_NAMES = {f"attn.w{x}.bias": f"self_attn.{x}_proj.bias" for x in "qkv"}  # Qwen2
QK_NORM_NAMES = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
TOP_NAMES = {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX_FILE = "model.safetensors.index.json"


def hf_param_names(config: ModelConfig) -> dict[str, str]:
    """Map every parameter name of ``Transformer(config)`` to its HF name (lm_head only when untied)."""
    layer = dict(LAYER_NAMES)
    if config.qkv_bias:
        layer.update(QKV_BIAS_NAMES)
    if config.qk_norm:
        layer.update(QK_NORM_NAMES)
    names = dict(TOP_NAMES)
    for i in range(config.n_layer):
        names.update({f"blocks.{i}.{ours}": f"model.layers.{i}.{theirs}" for ours, theirs in layer.items()})
    if not config.tie_embeddings:
        names["lm_head.weight"] = "lm_head.weight"
    return names


def dtype_of(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a directory (one, or the shards its index names); refuses pickle checkpoints."""
    if (directory / "model.safetensors").exists():
        return [directory / "model.safetensors"]
    index = directory / INDEX_FILE
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as error:
            raise ValueError(f"{index}: not a safetensors index (a 'weight_map' of name -> file): {error}") from None
        outside = [s for s in shards if Path(s).name != s]
        if outside:
            raise ValueError(f"{index}: shards must be files beside the index, got {outside[:3]}")
        return [directory / shard for shard in shards]
    if any(directory.glob("pytorch_model*.bin")):
        raise ValueError(
            f"{directory} only has pytorch_model*.bin (pickle) weights; refusing to load them because unpickling can "
            "execute code. Convert to safetensors first (e.g. save_pretrained(..., safe_serialization=True)).")
    raise FileNotFoundError(f"no model.safetensors or {INDEX_FILE} in {directory}")


def read_weights(directory: Path, names: set[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors `names` of a directory's safetensors files, each cast to `dtype` as it is read (None keeps the
    stored dtype), so a bf16 checkpoint never exists in float32 in memory. Other tensors are listed, not read."""
    tensors: dict[str, torch.Tensor] = {}
    unexpected = []
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as file:
            for key in file.keys():
                if key in names:
                    tensor = file.get_tensor(key)
                    tensors[key] = tensor if dtype is None else tensor.to(dtype)
                elif not key.endswith("rotary_emb.inv_freq"):
                    unexpected.append(key)
    missing = sorted(names - set(tensors))
    if missing:
        raise ValueError(f"{directory}: checkpoint is missing weights: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    unexpected = sorted(set(unexpected) - {"lm_head.weight"})  # a tied model's redundant head is fine
    if unexpected:
        raise ValueError(f"{directory}: checkpoint has weights this architecture cannot use: {unexpected[:5]}")
    return tensors


def write_weights(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int | None) -> list[Path]:
    """Write tensors as `model.safetensors`, or, when they are larger than `max_shard_bytes`, as
    `model-0000i-of-0000n.safetensors` shards with `model.safetensors.index.json` (transformers' layout)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    for stale in [out / "model.safetensors", out / INDEX_FILE, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)  # a re-export must not leave the previous layout's files behind
    if len(shards) == 1:
        paths = [out / "model.safetensors"]
    else:
        paths = [out / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        weight_map = {name: path.name for path, shard in zip(paths, shards) for name in shard}
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for path, shard in zip(paths, shards):
        save_file(shard, str(path), metadata={"format": "pt"})
        readable_like_the_rest(path)
    return paths


def readable_like_the_rest(path: Path) -> None:
    """safetensors writes through a private temporary file (mode 0600); give the weights the mode every other file
    of the export gets (0666 less the umask, usually 0644), so whoever can read the folder can load the model."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
