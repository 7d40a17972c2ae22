"""Reading and writing lit_llm checkpoints.

A stage checkpoint is a Lightning checkpoint with one extra entry, `checkpoint["lit_llm"]`, holding only plain
Python values (stage name, model config, tokenizer JSON, MLflow run id), so every checkpoint loads with
`torch.load(weights_only=True)` and no checkpoint can execute code when loaded.

`load_backbone` is the one entry point the later stages, `generate` and `export` use to get a model and its
tokenizer from either one of our checkpoints or a Hugging Face directory or hub id. A LoRA checkpoint (adapters
and heads only) is loaded onto its recorded base, checked by digest, and merged (`load_adapted`).
"""

import dataclasses
import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.utilities.consolidate_checkpoint import _format_checkpoint
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from lit_llm.hf import load_hf, looks_like_hub_id, resolve_pretrained
from lit_llm.lora import LoRAConfig, apply_lora, is_adapter_key, merge_adapters, weights_digest
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


# What torch.distributed.checkpoint pickles into a `.metadata` file (checked against torch 2.4-2.13): its metadata
# dataclasses, torch.Size, dtypes, layouts, memory formats and the checkpoint's path. Nothing else is constructed.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_DCP_NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
              ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath"),
              ("collections", "OrderedDict")}


class _DCPMetadataUnpickler(pickle.Unpickler):
    """Reads a `.metadata` pickle with a closed list of constructible classes (the "restricting globals" recipe of
    Python's pickle documentation): any other global, the only way a pickle can call code, is refused before it
    is looked up, so a crafted file fails without running anything."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        allowed = (module, name) in _DCP_NAMES or (module in _DCP_MODULES and not name.startswith("__"))
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(f"{self.path}: refusing to load '{module}.{name}': not one of the "
                                         f"classes torch.distributed.checkpoint writes (nothing was run)")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id in a checkpoint index")


def read_sharded_metadata(path: Path) -> Any:
    """The `.metadata` index of a sharded checkpoint directory, read without running code (see above)."""
    index = path / ".metadata"
    if not index.is_file():
        raise ValueError(f"{path} has {SHARDED_META_FILE} but no .metadata index: not a complete sharded checkpoint")
    with open(index, "rb") as f:
        return _DCPMetadataUnpickler(f, index).load()


def _byte_items(path: Path, metadata: Any) -> Iterator[tuple[str, bytes]]:
    """(key, raw bytes) of every non-tensor entry of a sharded checkpoint, with its file kept inside `path`."""
    root = path.resolve()
    for index, info in metadata.storage_data.items():
        if not isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            continue
        shard = (path / info.relative_path).resolve()
        if root not in shard.parents or getattr(info, "transform_descriptors", None):
            raise ValueError(f"{path}: entry {index.fqn!r} points outside the folder or is transformed "
                             f"({info.relative_path!r})")
        with open(shard, "rb") as f:
            f.seek(info.offset)
            yield index.fqn, f.read(info.length)


def verify_sharded_checkpoint(path: Path) -> None:
    """Refuse a sharded checkpoint directory unless every pickled part of it is plain data, before anything else
    reads it: the index (restricted unpickler), each non-tensor entry and meta.pt (`torch.load(weights_only=True)`).

    Lightning's FSDP resume reads these parts with unrestricted pickle; checking them first, the same way the
    shards' tensors are read, means a crafted folder fails here without running code.
    """
    try:
        metadata = read_sharded_metadata(path)
        for key, raw in _byte_items(path, metadata):
            _load_plain(io.BytesIO(raw), f"{path}: entry {key!r}")
        _load_plain(path / SHARDED_META_FILE, str(path / SHARDED_META_FILE))
    except (pickle.UnpicklingError, ValueError, OSError, EOFError, AttributeError, TypeError) as err:
        raise ValueError(f"cannot read sharded checkpoint {path}: {err}") from None


def _load_plain(source: Any, what: str) -> Any:
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{what} holds objects that are not plain data; refused so that no checkpoint can run "
                         f"code ({str(err).splitlines()[0]})") from None


def verify_checkpoint_directory(path: Path) -> None:
    """Before a strategy's own loader reads a checkpoint directory (Lightning's FSDP resume, DeepSpeed's), check
    that every pickled file in it is plain data; a crafted folder then fails here, before any of it is unpickled.

    An FSDP sharded directory is checked as above; any other directory (DeepSpeed's layout) file by file with
    `torch.load(weights_only=True)`, so a DeepSpeed checkpoint holding DeepSpeed objects (an fp16 loss scaler)
    is refused too (use bf16, or FSDP).
    """
    if is_sharded_checkpoint(path):
        return verify_sharded_checkpoint(path)
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".pt", ".ckpt", ".bin")):
        _load_plain(file, str(file))


def guard_strategy_loads(strategy: Any) -> None:
    """Make `strategy.load_checkpoint` verify a checkpoint directory (`verify_checkpoint_directory`) before the
    strategy reads it. Files go through `SafeCheckpointIO`; directories bypass it under FSDP and DeepSpeed."""
    load = strategy.load_checkpoint

    def guarded(checkpoint_path: Any, *args: Any, **kwargs: Any) -> dict:
        if "://" not in str(checkpoint_path) and Path(checkpoint_path).is_dir():
            verify_checkpoint_directory(Path(checkpoint_path))
        return load(checkpoint_path, *args, **kwargs)

    strategy.load_checkpoint = guarded


def read_sharded_checkpoint(path: Path) -> dict:
    """Consolidate an FSDP sharded checkpoint directory into the usual checkpoint dict, in memory, without
    unpickling anything: torch.distributed.checkpoint's reader with the restricted index reader above, and
    non-tensor entries (tensors are always) read with `torch.load(weights_only=True)`."""
    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_sharded_metadata(path)
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafePlanner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:  # DefaultLoadPlanner's, weights only
            fqn = read_item.dest_index.fqn
            obj = _load_plain(value, f"{path}: entry {fqn!r}")
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    verify_sharded_checkpoint(path)
    checkpoint: dict[str, Any] = {}
    _load_state_dict(checkpoint, storage_reader=SafeReader(path), planner=SafePlanner(), no_dist=True)
    checkpoint.update(_load_plain(path / SHARDED_META_FILE, str(path / SHARDED_META_FILE)))
    return _format_sharded(checkpoint)


def _format_sharded(checkpoint: dict) -> dict:
    """Lightning's layout of a consolidated sharded checkpoint: "model" -> "state_dict", "optimizer_N" ->
    "optimizer_states" (what `lightning.pytorch.utilities.consolidate_checkpoint` does)."""
    return _format_checkpoint(checkpoint)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint file safely (`weights_only=True`), or an FSDP sharded directory, with errors that name it."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        return read_sharded_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read checkpoint {path}: empty file (0 bytes; a write that never happened?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, ...
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read checkpoint {path} (truncated, not a checkpoint, or it holds objects that "
                         f"are not plain data, which are refused so that no checkpoint can run code): {cause}"
                         ) from err


def checkpoint_origin(path: str | Path) -> tuple[str | None, str | None]:
    """(MLflow run, stage) that wrote a checkpoint, read without loading its tensors ((None, None) when unreadable:
    the real load reports why)."""
    path = Path(path)
    try:
        if is_sharded_checkpoint(path):
            verify_sharded_checkpoint(path)
            meta = torch.load(path / SHARDED_META_FILE, map_location="cpu", weights_only=True)
        else:
            meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return meta[META_KEY].get("mlflow_run_id"), meta[META_KEY].get("stage")
    except Exception:
        return None, None


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


def load_tokenizer(source: str | Path) -> Tokenizer:
    """The tokenizer of a lit_llm checkpoint (file or sharded folder) or a Hugging Face directory, read without
    loading any weights: what a data module tokenizes with (`tokenizer_from`)."""
    if is_hf_source(source):
        source = resolve_pretrained(source)
        if not (source / "tokenizer.json").is_file():
            raise ValueError(f"{source} has no tokenizer.json; a model never travels without its tokenizer")
        return Tokenizer.from_file(source / "tokenizer.json")
    source = Path(source)
    if is_sharded_checkpoint(source):
        verify_sharded_checkpoint(source)
        meta = _load_plain(source / SHARDED_META_FILE, str(source / SHARDED_META_FILE))
    else:
        if not source.is_file():
            raise FileNotFoundError(f"checkpoint not found: {source}")
        try:
            meta = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            meta = read_checkpoint(source)  # its error names the file and why
    return Tokenizer.from_json(checkpoint_stage_meta(meta, source)["tokenizer"])


def is_hf_source(source: str | Path) -> bool:
    """A Hugging Face directory or hub id (not one of our checkpoints, file or sharded folder)."""
    path = Path(source)
    return looks_like_hub_id(source) or (path.is_dir() and not is_sharded_checkpoint(path))


def load_backbone(source: str | Path, prefix: str = "model.", dtype: str | torch.dtype | None = None) -> LoadedModel:
    """Load a backbone and its tokenizer from a lit_llm checkpoint file or a Hugging Face model.

    Args:
        source: A `.ckpt` written by any stage (a file, or the directory FSDP writes with sharded checkpoints), a
            Hugging Face directory with config.json + safetensors weights, or a hub id (`hf:Qwen/Qwen2.5-0.5B`).
        prefix: Where the backbone lives in the stage module's state dict.
        dtype: A Hugging Face model's dtype in memory (None: as stored); our checkpoints keep theirs.
    """
    if is_hf_source(source):
        model, tokenizer = load_hf(source, dtype)
        if tokenizer is None:
            raise ValueError(f"{source} has no tokenizer.json; a model never travels without its tokenizer")
        return LoadedModel(model, tokenizer, "hf", None, {}, {})
    source = Path(source)
    checkpoint = read_checkpoint(source)
    meta = checkpoint_stage_meta(checkpoint, source)
    state = checkpoint["state_dict"]
    tokenizer = Tokenizer.from_json(meta["tokenizer"])
    if "lora" in meta:  # adapters only: onto their base, merged
        model = merge_adapters(load_adapted(source, meta, state, prefix))
        return LoadedModel(model, tokenizer, meta["stage"], meta.get("mlflow_run_id"), meta, state)
    model = Transformer(ModelConfig.from_dict(meta["model_config"]))
    missing, unexpected = model.load_state_dict(backbone_state(state, prefix), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing:
        raise ValueError(f"{source}: backbone weights missing from the checkpoint: {missing[:5]}")
    return LoadedModel(model, tokenizer, meta["stage"], meta.get("mlflow_run_id"), meta, state)


def load_adapted(source: Path, meta: dict, state: dict[str, torch.Tensor], prefix: str = "model.") -> Transformer:
    """The backbone of a LoRA checkpoint with its adapters (not merged): its base loaded from where the run took
    it and refused unless its weights are the ones the adapters were trained on (same sha256)."""
    base_info = meta["lora"]["bases"].get(prefix.rstrip("."))
    if base_info is None:
        raise ValueError(f"{source}: a LoRA checkpoint without a recorded base for {prefix.rstrip('.')!r}")
    if not is_hf_source(base_info["source"]) and not Path(base_info["source"]).exists():
        raise FileNotFoundError(f"{source}: its LoRA base {base_info['source']} is gone; a LoRA checkpoint holds only "
                                f"adapters (keep the base where it was, or export a merged model while it exists)")
    base = load_backbone(base_info["source"], dtype="float32").model  # the dtype the stage trained on
    digest = weights_digest(base)
    if digest != base_info["sha256"]:
        raise ValueError(f"{source}: its LoRA base {base_info['source']} is not the model the adapters were "
                         f"trained on (sha256 {digest[:12]}, trained on {base_info['sha256'][:12]}); restore that "
                         f"base, or merge before replacing it (lit-llm export)")
    config = LoRAConfig(**meta["lora"]["config"])
    apply_lora(base, dataclasses.replace(config, quantize_base=False))  # QLoRA adapters merge into full precision
    adapters = {k: v for k, v in backbone_state(state, prefix).items() if is_adapter_key(k)}
    missing = sorted({k for k in base.state_dict() if is_adapter_key(k)} - set(adapters))
    if missing:
        raise ValueError(f"{source}: LoRA weights missing from the checkpoint: {missing[:5]}")
    base.load_state_dict(adapters, strict=False)
    return base
