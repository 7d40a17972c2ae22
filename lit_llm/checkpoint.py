"""Reading and writing lit_llm checkpoints.

A stage checkpoint is a Lightning checkpoint with one extra entry, `checkpoint["lit_llm"]`, holding only plain
Python values (stage name, model config, tokenizer JSON, MLflow run id), so every checkpoint loads with
`torch.load(weights_only=True)` and no checkpoint can execute code when loaded.

`load_backbone` is the one entry point the later stages, `generate` and `export` use to get a model and its
tokenizer from either one of our checkpoints or a Hugging Face Llama-format directory.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lit_llm.model import ModelConfig, Transformer
from lit_llm.tokenizer import Tokenizer

META_KEY = "lit_llm"
FORMAT_VERSION = 1
SHARDED_META_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint


@dataclass
class LoadedModel:
    """A backbone, its tokenizer, and where they came from."""

    model: Transformer
    tokenizer: Tokenizer
    stage: str  # "pretrain", "sft", ..., or "hf" for a Hugging Face directory
    run_id: str | None  # MLflow run that produced the weights, when known
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]  # the stage module's full state dict (heads included)


def checkpoint_meta(stage: str, config: ModelConfig, tokenizer: Tokenizer, run_id: str | None) -> dict:
    """The plain-data entry a stage adds to its checkpoint in `on_save_checkpoint`."""
    return {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "model_config": config.to_dict(),
        "tokenizer": tokenizer.to_json(),
        "mlflow_run_id": run_id,
    }


def is_sharded_checkpoint(path: Path) -> bool:
    """A directory that FSDP wrote with `state_dict_type: sharded`: torch.distributed.checkpoint shards + meta.pt."""
    return path.is_dir() and (path / SHARDED_META_FILE).is_file()


def read_sharded_checkpoint(path: Path) -> dict:
    """Consolidate an FSDP sharded checkpoint directory into the usual checkpoint dict, in memory.

    Uses Lightning's own reader (what `python -m lightning.pytorch.utilities.consolidate_checkpoint` runs).
    Note torch.distributed.checkpoint stores the shard index (`.metadata`) as a pickle: read sharded directories
    of your own runs only, and share weights as `lit-llm export` directories (safetensors).
    """
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint

    return _format_checkpoint(_load_distributed_checkpoint(path))


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file safely (`weights_only=True`), or an FSDP sharded directory, with errors that name it."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        try:
            return read_sharded_checkpoint(path)
        except Exception as err:
            raise ValueError(f"cannot read sharded checkpoint {path}: {err}") from err
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...
        raise ValueError(f"cannot read checkpoint {path} (truncated, not a checkpoint, or it holds objects that "
                         f"are not plain data, which are refused so that no checkpoint can run code): {err}") from err


def atomic_save(checkpoint: dict, path: str | Path) -> None:
    """`torch.save` to a temporary file beside `path`, flushed to disk, then renamed over it.

    A kill at any moment leaves either the previous file or the new one, never a half-written one. (Lightning's own
    atomic save writes its temporary file in the system temp directory; across filesystems its final move is a
    plain copy into place, which a kill can cut short.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)


def remove_stale_temporaries(directory: Path) -> None:
    """Delete the temporary files of `atomic_save` writes whose process died (killed mid-write)."""
    for tmp in directory.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with atomic local writes (`atomic_save`) and reads that never run code
    (`weights_only=True`) and name the file when it cannot be read. Remote paths (s3://...) keep Lightning's IO."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        if "://" in str(path):
            return super().load_checkpoint(path, weights_only=True)
        return read_checkpoint(path)


def checkpoint_stage_meta(checkpoint: dict, path: str | Path) -> dict:
    """The `lit_llm` metadata of a checkpoint, or a clear error when it is not one of ours."""
    meta = checkpoint.get(META_KEY)
    if not isinstance(meta, dict) or "model_config" not in meta:
        raise ValueError(f"{path} is not a lit_llm checkpoint (no '{META_KEY}' entry with a model config)")
    return meta


def backbone_state(state_dict: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The backbone's weights out of a stage module's state dict (keys under `prefix`)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_backbone(source: str | Path, prefix: str = "model.") -> LoadedModel:
    """Load a backbone and its tokenizer from a lit_llm checkpoint file or a Hugging Face Llama directory.

    Args:
        source: A `.ckpt` written by any stage (a file, or the directory FSDP writes with sharded checkpoints), or
            a Hugging Face directory with config.json + model.safetensors.
        prefix: Where the backbone lives in the stage module's state dict.
    """
    source = Path(source)
    if source.is_dir() and not is_sharded_checkpoint(source):
        from lit_llm.hf import load_hf

        model, tokenizer = load_hf(source)
        if tokenizer is None:
            raise ValueError(f"{source} has no tokenizer.json; a model never travels without its tokenizer")
        return LoadedModel(model, tokenizer, "hf", None, {}, {})
    checkpoint = read_checkpoint(source)
    meta = checkpoint_stage_meta(checkpoint, source)
    model = Transformer(ModelConfig.from_dict(meta["model_config"]))
    state = checkpoint["state_dict"]
    missing, unexpected = model.load_state_dict(backbone_state(state, prefix), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing:
        raise ValueError(f"{source}: backbone weights missing from the checkpoint: {missing[:5]}")
    tokenizer = Tokenizer.from_json(meta["tokenizer"])
    return LoadedModel(model, tokenizer, meta["stage"], meta.get("mlflow_run_id"), meta, state)
