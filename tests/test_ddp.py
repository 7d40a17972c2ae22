"""Stages under DDP: 2 CPU processes with the gloo backend, launched as a real `lit-llm fit` subprocess (Lightning
re-runs the command for the second rank).

Every stage but PPO trains the same weights with 2 processes at per-process batch B as with 1 process at batch 2B
(the data modules deal one global order out to the ranks, `lit_llm.data.sampling`). PPO samples its rollouts with
a generator per rank, so 2 processes draw different responses from 1: there the test checks the DDP mechanics.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_llm.checkpoint import read_checkpoint
from lit_llm.commands import main
from tests.conftest import REPO, micro_pretrain_args
from tests.test_dpo import DPO_TINY
from tests.test_ppo import PPO_TINY, ckpt, metrics_of, micro_ppo_args
from tests.test_reward import REWARD_TINY
from tests.test_sft import SFT_TINY

LORA = ["--model.init_args.lora.r=4", "--model.init_args.lora.target_modules=all-linear",
        "--model.init_args.optim.lr=1e-2"]
# Largest weight difference allowed after 4 AdamW steps (weights are O(1)): float summation order only.
TOLERANCE = 1e-5


def fit_ddp(args: list[str]) -> None:
    """`lit-llm fit` with 2 CPU processes; fails the test with the subprocess's output when it fails (no time limit:
    a loaded machine is slow)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lit_llm", "fit", *args, "--trainer.strategy=ddp",
                           "--trainer.devices=2", "--trainer.accelerator=cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_ppo_under_ddp_each_rank_samples_its_own_rollouts(tiny_pretrain: Path, reward_ckpt: str,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "ppo-ddp"
    # the first rollout is a value warm-up: the policy's gradients are dropped after DDP has reduced them
    fit_ddp([*micro_ppo_args(PPO_TINY, root, ckpt(tiny_pretrain), reward_ckpt),
             "--model.init_args.update.value_warmup_rollouts=1"])
    checkpoint = read_checkpoint(ckpt(root))
    states = checkpoint["lit_llm_ppo"]["generator_states"]
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])  # one generator per rank, distinct
    assert checkpoint["global_step"] == 4
    metrics = metrics_of(root)
    assert {"train/reward", "train/kl", "val/gold_accuracy"} <= metrics.keys()


def stage_args(stage: str, root: Path, init_from: str, token_cache: Path, batch_size: int) -> list[str]:
    """A 4-step run of the stage's tiny recipe at the given per-process batch size, without validation
    ("<stage>_lora": with LoRA adapters on every linear layer, at a learning rate that moves them)."""
    if stage.endswith("_lora"):
        return [*stage_args(stage.removesuffix("_lora"), root, init_from, token_cache, batch_size), *LORA]
    quiet = [f"--trainer.default_root_dir={root}", "--trainer.max_steps=4", "--trainer.limit_val_batches=0",
             "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
             "--trainer.logger.init_args.experiment_name=tests", f"--data.init_args.batch_size={batch_size}"]
    if stage == "pretrain":
        return [*micro_pretrain_args(root, token_cache, steps=4), *quiet]
    recipe = {"sft": [SFT_TINY, "--data.init_args.num_records=64", "--data.init_args.num_val_records=8",
                      "--data.init_args.max_length=64"],
              "reward": [REWARD_TINY, "--model.init_args.stats_prompts=8", "--data.init_args.num_pairs=48",
                         "--data.init_args.num_ranked=8", "--data.init_args.num_val_pairs=8",
                         "--data.init_args.num_val_ranked=4"],
              "dpo": [DPO_TINY, "--data.init_args.source=tasks", "--data.init_args.num_pairs=48",
                      "--data.init_args.num_val_pairs=4", "--data.init_args.max_length=64"]}[stage]
    return ["--config", recipe[0], f"--model.init_args.init_from={init_from}", *recipe[1:], *quiet]


def max_weight_difference(a: Path, b: Path) -> tuple[float, float]:
    """(largest |a - b| over all weights, largest |a| over all weights) of two runs' final checkpoints."""
    sa, sb = read_checkpoint(ckpt(a))["state_dict"], read_checkpoint(ckpt(b))["state_dict"]
    assert sa.keys() == sb.keys()
    diff = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    scale = max(sa[k].float().abs().max().item() for k in sa)
    return diff, scale


# Each case launches three `lit-llm fit` processes (~25 s on 2 cores): the default suite runs the stages whose DDP
# paths differ most (token streams; SFT's loss weighted by every rank's target tokens; record data, DPO and LoRA
# adapters), DDP_TEST_ALL=1 also reward and full-weight DPO.
DDP_STAGES = ["pretrain", "sft", "dpo_lora"] + (["reward", "dpo"] if os.environ.get("DDP_TEST_ALL") else [])


@pytest.mark.parametrize("stage", DDP_STAGES)
def test_two_processes_train_the_weights_of_one_process_at_the_same_global_batch(
        stage: str, tiny_pretrain: Path, token_cache: Path, tmp_path: Path) -> None:
    init_from = ckpt(tiny_pretrain)
    main(["fit", *stage_args(stage, tmp_path / "one", init_from, token_cache, batch_size=8)])
    fit_ddp(stage_args(stage, tmp_path / "two", init_from, token_cache, batch_size=4))
    checkpoint = read_checkpoint(ckpt(tmp_path / "two"))
    assert checkpoint["lit_llm"]["stage"] == stage.removesuffix("_lora") and checkpoint["global_step"] == 4
    diff, scale = max_weight_difference(tmp_path / "one", tmp_path / "two")
    print(f"{stage}: max |w1 - w2| = {diff:.3g} (max |w| = {scale:.3g})")
    assert diff < TOLERANCE
