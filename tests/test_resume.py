"""Exact resume: a run SIGKILLed at a random step and resumed from its last checkpoint ends with the uninterrupted
run's weights (bitwise) and metrics, for every stage, whether it died mid-step or in the middle of writing a
checkpoint (which then leaves the previous checkpoint whole).

Each stage runs 8 optimizer steps over epochs of 3 batches (PPO and GRPO: 4 rollouts of 2 updates over epochs of 2
batches), checkpointing every step and validating every 3 steps, so kills land mid-epoch, at epoch ends and
around validations. The kill step is drawn at random; set RESUME_TEST_SEED to replay a draw (it is printed).
"""

import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.checkpoint import read_checkpoint
from lit_llm.commands import main
from tests.conftest import REPO
from tests.test_ddp import LORA, stage_args
from tests.test_grpo import micro_grpo_args
from tests.test_ppo import PPO_TINY, ckpt, micro_ppo_args

STEPS = 8
EVERY_STEP = ["--trainer.callbacks+=lit_llm.checkpointing.StageCheckpoint",
              "--trainer.callbacks.every_n_train_steps=1"]
# metrics that are wall-clock measurements, not results
TIMING = ("tokens_per_s", "mfu", "time_", "_per_s")


def resume_args(stage: str, root: Path, init_from: str, reward_from: str, token_cache: Path,
                every_step: bool = True) -> list[str]:
    """The stage's micro recipe: 8 steps, 3-batch epochs, validation every 3 steps, a checkpoint every step (else
    the default checkpointing: at validation and epoch ends). "<stage>_lora": with LoRA adapters."""
    if stage.endswith("_lora"):
        return [*resume_args(stage.removesuffix("_lora"), root, init_from, reward_from, token_cache, every_step),
                *LORA]
    if stage == "ppo":
        args = [*micro_ppo_args(PPO_TINY, root, init_from, reward_from, rollouts=STEPS // 2),
                "--data.init_args.num_prompts=16", "--trainer.val_check_interval=3",
                "--model.init_args.kl.target=0.01", "--model.init_args.kl.horizon=100"]
    elif stage == "grpo":  # 4 batches of 2 updates; dynamic sampling draws a varying number of samples
        args = [*micro_grpo_args(root, init_from), f"--trainer.max_steps={STEPS}", "--trainer.val_check_interval=3",
                "--data.init_args.num_prompts=8", "--model.init_args.group.dynamic_sampling=resample",
                "--model.init_args.reward_from=format", "--model.init_args.loss.kl_coef=0.01"]
    else:
        args = [*stage_args(stage, root, init_from, token_cache, batch_size=4), f"--trainer.max_steps={STEPS}",
                "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
                "--trainer.val_check_interval=3", "--trainer.check_val_every_n_epoch=null",
                "--trainer.log_every_n_steps=1"]
    return [*args, *EVERY_STEP] if every_step else args


def run_with(args: list[str], fault: list[str]) -> subprocess.CompletedProcess:
    """`lit-llm fit` in a subprocess with a fault-injecting callback (no time limit: a loaded machine is slow)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lit_llm", "fit", *args, *fault], cwd=REPO, env=env,
                          capture_output=True, text=True)


def run_killed(args: list[str], step: int, during_save: bool) -> subprocess.CompletedProcess:
    """`lit-llm fit` in a subprocess that SIGKILLs itself at `step`."""
    return run_with(args, ["--trainer.callbacks+=tests.faults.KillAt", f"--trainer.callbacks.step={step}",
                           f"--trainer.callbacks.during_save={str(during_save).lower()}"])


def weights(root: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(ckpt(root))["state_dict"]


def metric_history(root: Path, after_step: int) -> dict[str, list[tuple[int, float]]]:
    """Every result metric of the run that wrote `root`'s last checkpoint, from step `after_step` on. A resumed run
    logs into its killed run, which may have logged the steps after its checkpoint already: the last value logged
    at a step counts."""
    client = MlflowClient()
    run_id = read_checkpoint(ckpt(root))["lit_llm"]["mlflow_run_id"]
    history = {}
    for name in client.get_run(run_id).data.metrics:
        if name.startswith(("train/", "val/")) and not any(t in name for t in TIMING):
            logged = sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp)
            points = sorted({m.step: m.value for m in logged if m.step > after_step}.items())
            if points:
                history[name] = [(s, v) for s, v in points if not math.isnan(v)]
    return history


def kill_point(stage: str) -> tuple[int, bool, int, str]:
    """A random one of the stage's kill points (see `every_kill_point`), and the seed that drew it."""
    seed = os.environ.get("RESUME_TEST_SEED") or str(random.SystemRandom().randrange(10**6))
    _, step, during_save, saved_step = random.Random(f"{seed}/{stage}").choice(
        [point for point in every_kill_point() if point[0] == stage])
    return step, during_save, saved_step, seed


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


STAGES = ["pretrain", "sft", "reward", "dpo", "ppo", "grpo", "dpo_lora"]
ALL = bool(os.environ.get("RESUME_TEST_ALL"))
# The default suite samples (each case is a killed `lit-llm fit` process and a resume, ~12 s on 2 cores): full-weight
# DPO's resume path is LoRA DPO's without the adapters, and the checkpoint bookkeeping of the last two tests is shared
# by the stages; RESUME_TEST_ALL=1 runs every stage and case.
DEFAULT_STAGES = STAGES if ALL else [s for s in STAGES if s != "dpo"]


@pytest.mark.parametrize("stage", DEFAULT_STAGES)
def test_killed_run_resumes_to_the_same_weights_and_metrics(stage: str, uninterrupted, tiny_pretrain: Path,
                                                            reward_ckpt: str, token_cache: Path,
                                                            tmp_path: Path) -> None:
    step, during_save, saved_step, seed = kill_point(stage)
    args = resume_args(stage, tmp_path, ckpt(tiny_pretrain), reward_ckpt, token_cache)
    kill_and_resume(args, uninterrupted(stage), tmp_path, step, during_save, saved_step, f"; RESUME_TEST_SEED={seed}")


def every_kill_point() -> list[tuple[str, int, bool, int]]:
    """(stage, step, during_save, step of the checkpoint left) for every place a run can be killed."""
    points = []
    for stage in STAGES:
        per_batch = 2 if stage in ("ppo", "grpo") else 1
        points += [(stage, step, False, step - step % per_batch) for step in range(per_batch, STEPS)]
        points += [(stage, step, True, step - per_batch) for step in range(2 * per_batch, STEPS, per_batch)]
    return points


@pytest.mark.skipif(not ALL, reason="all kill points: set RESUME_TEST_ALL=1 "
                    "(about 15 minutes)")
@pytest.mark.parametrize("stage,step,during_save,saved_step", every_kill_point())
def test_every_kill_point_resumes_exactly(stage: str, step: int, during_save: bool, saved_step: int, uninterrupted,
                                          tiny_pretrain: Path, reward_ckpt: str, token_cache: Path,
                                          tmp_path: Path) -> None:
    args = resume_args(stage, tmp_path, ckpt(tiny_pretrain), reward_ckpt, token_cache)
    kill_and_resume(args, uninterrupted(stage), tmp_path, step, during_save, saved_step)


def kill_and_resume(args: list[str], whole: Path, root: Path, step: int, during_save: bool, saved_step: int,
                    replay: str = "") -> None:
    """Kill a run at `step`, check what it left, resume it and compare it with the uninterrupted run `whole`."""
    note = f"killed at step {step} ({'while saving' if during_save else 'mid-step'}{replay})"
    proc = run_killed(args, step, during_save)
    assert proc.returncode == -9, f"{note}: the run was not killed\n{proc.stderr[-3000:]}"
    saved = read_checkpoint(ckpt(root))  # whole, whatever the kill interrupted
    assert saved["global_step"] == saved_step, note
    leftovers = list((root / "checkpoints").glob(".*.tmp-*"))
    assert bool(leftovers) == during_save, f"{note}: an interrupted write is to a temporary file: {leftovers}"
    main(["fit", *args, f"--ckpt_path={ckpt(root)}"])
    ours, reference = weights(root), weights(whole)
    assert ours.keys() == reference.keys()
    assert not list((root / "checkpoints").glob(".*.tmp-*")), "stale temporary files are cleaned up"
    changed = [k for k in reference if not torch.equal(ours[k], reference[k])]
    assert not changed, f"{note}: weights differ from the uninterrupted run: {changed[:5]}"
    expected, got = metric_history(whole, saved_step), metric_history(root, saved_step)
    differ = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    assert not differ and got.keys() == expected.keys(), f"{note}: metrics after the resume differ: {differ}"


def assert_same_as_uninterrupted(root: Path, whole: Path, after_step: int, note: str) -> None:
    """`root` ends with the uninterrupted run's weights (bitwise) and metrics, in `last.ckpt` and nowhere else."""
    lasts = sorted(p.name for p in (root / "checkpoints").glob("last*"))
    assert lasts == ["last.ckpt"], f"{note}: last.ckpt must be the newest state, with no other last-*: {lasts}"
    assert read_checkpoint(ckpt(root))["global_step"] == read_checkpoint(ckpt(whole))["global_step"], note
    ours, reference = weights(root), weights(whole)
    changed = [k for k in reference if not torch.equal(ours[k], reference[k])]
    assert not changed, f"{note}: weights differ from the uninterrupted run: {changed[:5]}"
    expected, got = metric_history(whole, after_step), metric_history(root, after_step)
    assert got == expected, f"{note}: metrics after the resume differ"


@pytest.mark.parametrize(("stage", "every_step"), [("pretrain", False), ("pretrain", True), ("ppo", True)]
                         + [("dpo", False), ("dpo", True), ("ppo", False)] * ALL,
                         ids=lambda v: {False: "default", True: "every_step"}.get(v, v))
def test_resuming_last_overwrites_last_ckpt(stage: str, every_step: bool, uninterrupted, tiny_pretrain: Path,
                                            reward_ckpt: str, token_cache: Path, tmp_path: Path) -> None:
    """`--ckpt_path=last` finds last.ckpt and the resumed run keeps writing it: no last-v1.ckpt, no stale file."""
    args = resume_args(stage, tmp_path, ckpt(tiny_pretrain), reward_ckpt, token_cache, every_step)
    kill = 7 if stage == "ppo" else 5  # PPO: 2 updates a rollout, the first validation after 3 rollouts
    assert run_killed(args, kill, during_save=False).returncode == -9
    saved_step = read_checkpoint(ckpt(tmp_path))["global_step"]
    assert saved_step == kill - kill % (2 if stage == "ppo" else 1) if every_step else saved_step < kill
    main(["fit", *args, "--ckpt_path=last"])
    assert_same_as_uninterrupted(tmp_path, uninterrupted(stage), saved_step, f"{stage}, killed at step {kill}")


@pytest.mark.parametrize(("stage", "signum"), [("ppo", signal.SIGTERM), ("sft", signal.SIGINT)]
                         + [("pretrain", signal.SIGTERM), ("dpo", signal.SIGTERM)] * ALL)
def test_a_signal_saves_last_ckpt_and_the_next_call_resumes_exactly(stage: str, signum: int, uninterrupted,
                                                                     tiny_pretrain: Path, reward_ckpt: str,
                                                                     token_cache: Path, tmp_path: Path) -> None:
    """SIGTERM (a scheduler's preemption) or Ctrl-C mid-step: the step finishes, last.ckpt is written at it, the
    process exits 128 + signal with the MLflow run KILLED, and `--ckpt_path=last` continues exactly."""
    args = resume_args(stage, tmp_path, ckpt(tiny_pretrain), reward_ckpt, token_cache, every_step=False)
    proc = run_with(args, ["--trainer.callbacks+=tests.faults.SignalAt", "--trainer.callbacks.step=4",
                           f"--trainer.callbacks.signum={int(signum)}"])
    assert proc.returncode == 128 + signum, proc.stderr[-3000:]
    assert f"stopped on {signal.Signals(signum).name} at step" in proc.stderr
    checkpoint = read_checkpoint(ckpt(tmp_path))
    assert checkpoint["global_step"] == (6 if stage == "ppo" else 5)  # the step under way when it arrived
    run = MlflowClient().get_run(checkpoint["lit_llm"]["mlflow_run_id"])
    assert run.info.status == "KILLED"
    main(["fit", *args, "--ckpt_path=last"])
    assert_same_as_uninterrupted(tmp_path, uninterrupted(stage), checkpoint["global_step"], f"{stage} stopped")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"  # the resumed run continued it


def test_time_based_checkpoints_add_to_the_default_ones(tiny_pretrain: Path, reward_ckpt: str, token_cache: Path,
                                                        tmp_path: Path) -> None:
    """`train_time_interval` writes last.ckpt when the interval has passed (here: every step) on top of the saves
    at validation, which stay."""
    args = [*resume_args("pretrain", tmp_path, ckpt(tiny_pretrain), reward_ckpt, token_cache, every_step=False),
            "--trainer.callbacks+=lit_llm.checkpointing.StageCheckpoint",
            "--trainer.callbacks.train_time_interval=0:00:00"]
    assert run_killed(args, 5, during_save=False).returncode == -9
    assert read_checkpoint(ckpt(tmp_path))["global_step"] == 5
