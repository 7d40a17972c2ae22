"""No checkpoint can run code: crafted folders in the layout of an FSDP sharded checkpoint, whose pickled parts
(the `.metadata` index, a non-tensor entry, `meta.pt`) would run a payload when unpickled, are refused on every
loading path (`lit-llm generate`, `init_from`, `ref_from`, `--ckpt_path`, a strategy's own directory reader)
with an error naming the folder, and the payload never runs."""

import pickle
from pathlib import Path

import pytest
import torch
from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save
from lightning.pytorch.strategies import FSDPStrategy

from lit_llm.checkpoint import guard_strategy_loads, read_checkpoint
from lit_llm.commands import main
from tests.conftest import micro_pretrain_args
from tests.test_ddp import stage_args
from tests.test_ppo import ckpt
from tests.test_strategies import write_sharded


class Payload:
    """Creates `marker` when unpickled (what an attacker's code would do instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def crafted(kind: str, root: Path, marker: Path, real: dict) -> Path:
    """A folder that looks like a sharded checkpoint, with the payload in its index, an entry or meta.pt."""
    folder = root / kind
    if kind == "index":
        folder.mkdir(parents=True)
        torch.save({}, folder / "meta.pt")
        with open(folder / ".metadata", "wb") as f:
            pickle.dump(Payload(marker), f)
    elif kind == "entry":
        folder.mkdir(parents=True)
        _distributed_checkpoint_save({"model": real["state_dict"], "extra": Payload(marker)}, folder)
        torch.save({k: v for k, v in real.items() if k not in ("state_dict", "optimizer_states")},
                   folder / "meta.pt")
    else:
        write_sharded(real, folder)
        torch.save({"lit_llm": real["lit_llm"], "boom": Payload(marker)}, folder / "meta.pt")
    return folder


KINDS = ["index", "entry", "meta"]


@pytest.fixture
def real_checkpoint(tiny_pretrain: Path) -> dict:
    return read_checkpoint(ckpt(tiny_pretrain))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("path", ["generate", "init_from", "ref_from", "ckpt_path"])
def test_a_crafted_sharded_folder_runs_nothing_on_any_loading_path(kind: str, path: str, real_checkpoint: dict,
                                                                   tiny_pretrain: Path, token_cache: Path,
                                                                   tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    folder = crafted(kind, tmp_path / "evil", marker, real_checkpoint)
    good = ckpt(tiny_pretrain)
    argv = {
        "generate": ["generate", str(folder), "--prompt", "hi"],
        "init_from": ["fit", *stage_args("sft", tmp_path / "run", str(folder), token_cache, batch_size=4)],
        "ref_from": ["fit", *stage_args("dpo", tmp_path / "run", good, token_cache, batch_size=4),
                     f"--model.init_args.ref_from={folder}"],
        "ckpt_path": ["fit", *micro_pretrain_args(tmp_path / "run", token_cache), f"--ckpt_path={folder}"],
    }[path]
    with pytest.raises((ValueError, SystemExit)) as error:
        main(argv)
    assert not marker.exists(), "the payload ran"
    assert f"cannot read sharded checkpoint {folder}" in str(error.value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_strategy_reading_directories_itself_checks_them_first(kind: str, real_checkpoint: dict,
                                                                 tmp_path: Path) -> None:
    """FSDP's resume reads a sharded folder with unrestricted pickle; the CLI's guard checks the folder first."""
    marker = tmp_path / "payload-ran"
    folder = crafted(kind, tmp_path / "evil", marker, real_checkpoint)
    strategy = FSDPStrategy()
    guard_strategy_loads(strategy)
    with pytest.raises(ValueError, match=f"cannot read sharded checkpoint {folder}"):
        strategy.load_checkpoint(folder)
    assert not marker.exists()


def test_a_real_sharded_checkpoint_reads_with_every_entry(real_checkpoint: dict, tmp_path: Path) -> None:
    write_sharded(real_checkpoint, tmp_path / "sharded")
    back = read_checkpoint(tmp_path / "sharded")
    assert back["optimizer_states"][0]["param_groups"] == real_checkpoint["optimizer_states"][0]["param_groups"]
    assert all(torch.equal(back["state_dict"][k], v) for k, v in real_checkpoint["state_dict"].items())


def test_an_empty_checkpoint_file_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "last.ckpt"
    empty.touch()
    with pytest.raises(ValueError, match=rf"cannot read checkpoint {empty}: empty file"):
        read_checkpoint(empty)
