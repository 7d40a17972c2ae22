"""Stages under DDP: 2 CPU processes with the gloo backend, launched as a real `lit-llm fit` subprocess (Lightning
re-runs the command for the second rank)."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from lit_llm.checkpoint import read_checkpoint
from tests.conftest import REPO
from tests.test_ppo import PPO_TINY, ckpt, metrics_of, micro_ppo_args


def fit_ddp(args: list[str], timeout: int = 600) -> None:
    """`lit-llm fit` with 2 CPU processes; fails the test with the subprocess's output when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "lit_llm", "fit", *args, "--trainer.strategy=ddp",
                           "--trainer.devices=2", "--trainer.accelerator=cpu"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_ppo_under_ddp_each_rank_samples_its_own_rollouts(tiny_pretrain: Path, reward_ckpt: str,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "ppo-ddp"
    fit_ddp(micro_ppo_args(PPO_TINY, root, ckpt(tiny_pretrain), reward_ckpt))
    checkpoint = read_checkpoint(ckpt(root))
    states = checkpoint["lit_llm_ppo"]["generator_states"]
    assert states.shape[0] == 2 and not torch.equal(states[0], states[1])  # one generator per rank, distinct
    assert checkpoint["global_step"] == 4
    metrics = metrics_of(root)
    assert {"train/reward", "train/kl", "val/gold_accuracy"} <= metrics.keys()
