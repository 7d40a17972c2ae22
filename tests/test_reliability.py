"""Safe checkpoints, numerical faults and determinism: a truncated checkpoint, one of another stage or model
shape, or one holding code is refused with a clear error; a NaN stops the run with the last good checkpoint
intact (or skips the update); the same seed twice gives the same run."""

import shutil
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from lit_llm.nonfinite import NonFiniteError
from lit_llm.checkpoint import load_backbone, read_checkpoint
from lit_llm.commands import main
from tests.conftest import micro_pretrain_args
from tests.test_ppo import ckpt
from tests.test_sft import sft_args

EVERY_STEP = ["--trainer.callbacks+=lit_llm.checkpointing.StageCheckpoint", "--trainer.callbacks.every_n_train_steps=1"]


def run_of(root: Path):
    return MlflowClient().get_run(read_checkpoint(ckpt(root))["lit_llm"]["mlflow_run_id"])


# ------------------------------------------------------------------------------------------- checkpoints
def test_a_truncated_checkpoint_is_named(tiny_pretrain: Path, tmp_path: Path, token_cache: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    data = Path(ckpt(tiny_pretrain)).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=rf"cannot read checkpoint {truncated} \(truncated"):
        load_backbone(truncated)
    with pytest.raises(ValueError, match=str(truncated)):
        main(["fit", *micro_pretrain_args(tmp_path / "run", token_cache), f"--ckpt_path={truncated}"])


def test_resuming_another_stage_or_model_shape_names_the_mismatch(tiny_pretrain: Path, tmp_path: Path,
                                                                  token_cache: Path) -> None:
    with pytest.raises(ValueError, match="written by the 'pretrain' stage; SFTModule resumes only 'sft'"):
        main(["fit", *sft_args(tmp_path / "sft", Path(ckpt(tiny_pretrain))), f"--ckpt_path={ckpt(tiny_pretrain)}"])
    args = micro_pretrain_args(tmp_path / "wider", token_cache)
    with pytest.raises(ValueError, match="d_model: checkpoint 64, this run 96"):
        main(["fit", *args, "--model.init_args.backbone.d_model=96", f"--ckpt_path={ckpt(tiny_pretrain)}"])


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.marker),))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tiny_pretrain: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(ckpt(tiny_pretrain), weights_only=True)
    _RunsCode.marker = str(tmp_path / "code-ran")
    checkpoint["payload"] = _RunsCode()
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="evil.ckpt .*refused so that no checkpoint can run code"):
        load_backbone(tmp_path / "evil.ckpt")
    assert not (tmp_path / "code-ran").exists()


def test_continued_pretraining_refuses_data_tokenized_with_another_tokenizer(tiny_pretrain: Path, tmp_path: Path,
                                                                             token_cache: Path) -> None:
    args = [*micro_pretrain_args(tmp_path / "run", token_cache, steps=2), f"--model.init_args.init_from="
            f"{ckpt(tiny_pretrain)}", "--gold.examples=0"]
    with pytest.raises(ValueError, match="another tokenizer than init_from .*vocab_size 300 here, 280 there"):
        main(["fit", *args, "--data.init_args.vocab_size=280"])
    main(["export", ckpt(tiny_pretrain), str(tmp_path / "hf")])  # the checkpoint's own tokenizer: accepted
    main(["fit", *args, f"--data.init_args.tokenizer={tmp_path / 'hf'}"])
    assert read_checkpoint(ckpt(tmp_path / "run"))["global_step"] == 2


# -------------------------------------------------------------------------------------- numerical faults
def test_a_nan_loss_stops_before_the_update_with_the_last_checkpoint_intact(tmp_path: Path,
                                                                           token_cache: Path) -> None:
    args = [*micro_pretrain_args(tmp_path, token_cache), *EVERY_STEP,
            "--trainer.callbacks+=tests.faults.PoisonAt", "--trainer.callbacks.steps=[3]"]
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan at step 3 .*last good checkpoint is .*last\.ckpt"):
        main(["fit", *args])
    checkpoint = read_checkpoint(ckpt(tmp_path))
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())
    run = run_of(tmp_path)
    assert run.info.status == "FAILED" and "non-finite loss nan at step 3" in run.data.tags["lit_llm.nonfinite"]


def test_skip_mode_drops_the_poisoned_updates_and_counts_them(tmp_path: Path, token_cache: Path) -> None:
    args = [*micro_pretrain_args(tmp_path, token_cache, steps=6), *EVERY_STEP, "--trainer.callbacks.save_top_k=-1",
            "--trainer.callbacks+=tests.faults.PoisonAt", "--trainer.callbacks.steps=[2, 4]",
            "--trainer.callbacks+=lit_llm.nonfinite.NonFiniteGuard", "--trainer.callbacks.action=skip"]
    main(["fit", *args])
    states = {step: read_checkpoint(next((tmp_path / "checkpoints").glob(f"*step={step}.ckpt")))["state_dict"]
              for step in (2, 3, 4)}
    assert all(torch.equal(states[2][k], states[3][k]) for k in states[2]), "the skipped update changed nothing"
    assert not all(torch.equal(states[3][k], states[4][k]) for k in states[3]), "the next update is applied"
    assert all(torch.isfinite(w).all() for w in read_checkpoint(ckpt(tmp_path))["state_dict"].values())
    run = run_of(tmp_path)
    assert run.info.status == "FINISHED" and run.data.metrics["train/nonfinite_skipped"] == 2
    assert "update skipped (2 so far)" in run.data.tags["lit_llm.nonfinite"]


# ------------------------------------------------------------------------------------------- determinism
def test_the_same_seed_twice_gives_the_same_run(tmp_path: Path, token_cache: Path) -> None:
    """With dropout and the masked objective, so that the run's randomness matters."""
    def fit(root: Path, seed: int) -> tuple[list, dict]:
        main(["fit", *micro_pretrain_args(root, token_cache, steps=6), f"--seed_everything={seed}",
              "--trainer.deterministic=true", "--model.init_args.backbone.dropout=0.1",
              "--model.init_args.objective=masked", "--gold.examples=0"])
        run = run_of(root)
        history = [(m.step, m.value) for m in MlflowClient().get_metric_history(run.info.run_id, "train/loss")]
        return history, read_checkpoint(ckpt(root))["state_dict"]

    first, second, other = fit(tmp_path / "a", 1), fit(tmp_path / "b", 1), fit(tmp_path / "c", 2)
    assert first[0] == second[0] and len(first[0]) == 3
    assert all(torch.equal(first[1][k], second[1][k]) for k in first[1])
    assert first[0] != other[0]
    shutil.rmtree(tmp_path)
