"""Strategy overlays (configs/strategy/) parse into the intended Lightning strategies, and FSDP's sharded checkpoints
load and export like single-file ones. FSDP itself needs GPUs (Lightning refuses it on the CPU); the sharded
directory here is written with the same Lightning function and layout `FSDPStrategy.save_checkpoint` uses."""

from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lit_llm.checkpoint import load_backbone, read_checkpoint
from lit_llm.commands import main
from lit_llm.hf import load_hf
from lit_llm.model import Block
from tests.conftest import REPO

STRATEGIES = REPO / "configs" / "strategy"


def strategy_from(overlay: str, cls: type) -> object:
    """The trainer strategy an overlay describes, instantiated the way LightningCLI does (jsonargparse)."""
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=cls)
    config = yaml.safe_load((STRATEGIES / overlay).read_text())["trainer"]
    return parser.instantiate(parser.parse_object({"strategy": config["strategy"]})).strategy


def test_fsdp_overlay_wraps_each_decoder_block_and_saves_sharded_checkpoints() -> None:
    strategy = strategy_from("fsdp.yaml", FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and policy._module_classes == {Block}
    assert strategy._state_dict_type == "sharded"


def test_ddp_overlay() -> None:
    assert isinstance(strategy_from("ddp.yaml", DDPStrategy), DDPStrategy)


def write_sharded(checkpoint: dict, path: Path) -> None:
    """What `FSDPStrategy.save_checkpoint` writes with state_dict_type="sharded", from one process."""
    rest = dict(checkpoint)
    shards = {"model": rest.pop("state_dict")}
    shards.update({f"optimizer_{i}": state for i, state in enumerate(rest.pop("optimizer_states", []))})
    path.mkdir(parents=True)
    _distributed_checkpoint_save(shards, path)
    torch.save(rest, path / "meta.pt")


def test_a_sharded_checkpoint_loads_and_exports_like_the_single_file_one(tiny_pretrain: Path, tmp_path: Path) -> None:
    single = tiny_pretrain / "checkpoints" / "last.ckpt"
    sharded = tmp_path / "last.ckpt"
    write_sharded(read_checkpoint(single), sharded)
    consolidated = read_checkpoint(sharded)
    assert consolidated["lit_llm"]["stage"] == "pretrain" and len(consolidated["optimizer_states"]) == 1
    a, b = load_backbone(single), load_backbone(sharded)
    tokens = torch.randint(0, a.model.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(a.model(tokens), b.model(tokens))
    main(["export", str(sharded), str(tmp_path / "hf")])
    exported, _ = load_hf(tmp_path / "hf")
    with torch.no_grad():
        assert torch.allclose(exported(tokens), a.model(tokens), atol=1e-6)
