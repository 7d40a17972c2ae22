"""`lit_llm.callbacks.Compile`: compiled blocks train like eager ones, checkpoints keep their names, and generation
(gold evaluation during validation) runs the compiled blocks eagerly."""

from pathlib import Path

import torch

from lit_llm.checkpoint import read_checkpoint
from lit_llm.commands import main
from tests.conftest import micro_pretrain_args


def test_compiled_blocks_train_the_same_weights_as_eager(token_cache: Path, tmp_path: Path) -> None:
    # aot_eager traces every block through dynamo and AOTAutograd without generating kernels: the same graph
    # machinery as inductor at a fraction of the compile time on a CPU test machine.
    compiled = ["--trainer.callbacks+=lit_llm.callbacks.Compile", "--trainer.callbacks.backend=aot_eager"]
    main(["fit", *micro_pretrain_args(tmp_path / "eager", token_cache, steps=4)])
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    main(["fit", *micro_pretrain_args(tmp_path / "compiled", token_cache, steps=4), *compiled])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the blocks did go through dynamo
    eager = read_checkpoint(tmp_path / "eager" / "checkpoints" / "last.ckpt")["state_dict"]
    state = read_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.ckpt")["state_dict"]
    assert state.keys() == eager.keys()  # no `_orig_mod.` prefixes
    for name, value in state.items():
        torch.testing.assert_close(value, eager[name], atol=1e-5, rtol=1e-4)
