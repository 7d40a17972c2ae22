"""Exact resume: a run SIGKILLed at a random step and resumed from its last checkpoint ends with the uninterrupted
run's weights (bitwise) and metrics, for every stage, whether it died mid-step or in the middle of writing a
checkpoint (which then leaves the previous checkpoint whole).

Each stage runs 8 optimizer steps over epochs of 3 batches (PPO: 4 rollouts of 2 updates over epochs of 2
batches), checkpointing every step and validating every 3 steps, so kills land mid-epoch, at epoch ends and
around validations. The kill step is drawn at random; set RESUME_TEST_SEED to replay a draw (it is printed).
"""

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import read_checkpoint
from lit_llm.cli import main
from tests.conftest import REPO
from tests.test_ddp import stage_args
from tests.test_ppo import PPO_TINY, ckpt, micro_ppo_args

STEPS = 8
EVERY_STEP = ["--trainer.callbacks+=lit_llm.callbacks.StageCheckpoint",
              "--trainer.callbacks.every_n_train_steps=1"]
# metrics that are wall-clock measurements, not results
TIMING = ("tokens_per_s", "mfu", "time_", "_per_s")


def resume_args(stage: str, root: Path, init_from: str, reward_from: str, token_cache: Path) -> list[str]:
    """The stage's micro recipe: 8 steps, 3-batch epochs, validation every 3 steps, a checkpoint every step."""
    if stage == "ppo":
        args = [*micro_ppo_args(PPO_TINY, root, init_from, reward_from, rollouts=STEPS // 2),
                "--data.init_args.num_prompts=16", "--trainer.val_check_interval=3",
                "--model.init_args.target_kl=0.01", "--model.init_args.kl_horizon=100"]
    else:
        args = [*stage_args(stage, root, init_from, token_cache, batch_size=4), f"--trainer.max_steps={STEPS}",
                "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
                "--trainer.val_check_interval=3", "--trainer.check_val_every_n_epoch=null",
                "--trainer.log_every_n_steps=1"]
    return [*args, *EVERY_STEP]


def run_killed(args: list[str], step: int, during_save: bool) -> subprocess.CompletedProcess:
    """`lit-llm fit` in a subprocess that SIGKILLs itself at `step`."""
    kill = ["--trainer.callbacks+=tests.faults.KillAt", f"--trainer.callbacks.step={step}",
            f"--trainer.callbacks.during_save={str(during_save).lower()}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lit_llm", "fit", *args, *kill], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def weights(root: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(ckpt(root))["state_dict"]


def metric_history(root: Path, after_step: int) -> dict[str, list[tuple[int, float]]]:
    """Every result metric of the run that wrote `root`'s last checkpoint, from step `after_step` on."""
    client = MlflowClient()
    run_id = read_checkpoint(ckpt(root))["lit_llm"]["mlflow_run_id"]
    history = {}
    for name in client.get_run(run_id).data.metrics:
        if name.startswith(("train/", "val/")) and not any(t in name for t in TIMING):
            points = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name) if m.step > after_step)
            if points:
                history[name] = [(s, v) for s, v in points if not math.isnan(v)]
    return history


def kill_point(stage: str) -> tuple[int, bool, int, str]:
    """(step to kill at, whether to kill while saving, global step of the checkpoint left behind, the seed)."""
    seed = os.environ.get("RESUME_TEST_SEED") or str(random.SystemRandom().randrange(10**6))
    rng = random.Random(f"{seed}/{stage}")
    per_batch = 2 if stage == "ppo" else 1  # PPO checkpoints after each rollout's 2 updates
    during_save = rng.random() < 0.5
    if during_save:  # die writing the checkpoint of a batch's end: the one before it is left
        step = per_batch * rng.randrange(2, STEPS // per_batch)
        return step, True, step - per_batch, seed
    step = rng.randrange(per_batch, STEPS)  # die before update `step + 1`: the last batch end before it is left
    return step, False, step - step % per_batch, seed


@pytest.fixture(scope="module")
def uninterrupted(tiny_pretrain: Path, reward_ckpt: str, token_cache: Path,
                  tmp_path_factory: pytest.TempPathFactory):
    """Per stage, the run directory of one uninterrupted run (made on first use)."""
    done: dict[str, Path] = {}

    def get(stage: str) -> Path:
        if stage not in done:
            root = tmp_path_factory.mktemp(f"{stage}-whole")
            main(["fit", *resume_args(stage, root, ckpt(tiny_pretrain), reward_ckpt, token_cache)])
            done[stage] = root
        return done[stage]
    return get


@pytest.mark.parametrize("stage", ["pretrain", "sft", "reward", "dpo", "ppo"])
def test_killed_run_resumes_to_the_same_weights_and_metrics(stage: str, uninterrupted, tiny_pretrain: Path,
                                                            reward_ckpt: str, token_cache: Path,
                                                            tmp_path: Path) -> None:
    step, during_save, saved_step, seed = kill_point(stage)
    note = f"killed at step {step} ({'while saving' if during_save else 'mid-step'}; RESUME_TEST_SEED={seed})"
    whole = uninterrupted(stage)
    args = resume_args(stage, tmp_path, ckpt(tiny_pretrain), reward_ckpt, token_cache)
    proc = run_killed(args, step, during_save)
    assert proc.returncode == -9, f"{note}: the run was not killed\n{proc.stderr[-3000:]}"
    saved = read_checkpoint(ckpt(tmp_path))  # whole, whatever the kill interrupted
    assert saved["global_step"] == saved_step, note
    leftovers = list((tmp_path / "checkpoints").glob(".*.tmp-*"))
    assert bool(leftovers) == during_save, f"{note}: an interrupted write is to a temporary file: {leftovers}"
    main(["fit", *args, f"--ckpt_path={ckpt(tmp_path)}"])
    ours, reference = weights(tmp_path), weights(whole)
    assert ours.keys() == reference.keys()
    assert not list((tmp_path / "checkpoints").glob(".*.tmp-*")), "stale temporary files are cleaned up"
    changed = [k for k in reference if not torch.equal(ours[k], reference[k])]
    assert not changed, f"{note}: weights differ from the uninterrupted run: {changed[:5]}"
    resumed_from = saved["global_step"]
    expected, got = metric_history(whole, resumed_from), metric_history(tmp_path, resumed_from)
    differ = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not differ and got.keys() == expected.keys(), f"{note}: metrics after the resume differ: {differ}"

