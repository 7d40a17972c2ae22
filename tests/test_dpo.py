"""DPO: the loss variants against hand computation, ln 2 at policy = reference, precomputed = per-step reference
log-probs, the reference kept out of the checkpoint, and a micro run end to end through the CLI."""

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from mlflow import MlflowClient

import lit_llm.model as model_module
from lit_llm import shared_prefix
from lit_llm.attention import Unpadded
from lit_llm.checkpoint import read_checkpoint
from lit_llm.commands import main
from lit_llm.data.preference import PreferenceDataModule
from lit_llm.losses import cdpo_loss, dpo_logratios, dpo_sigmoid_loss, hinge_loss, ipo_loss, rpo_nll_loss
from lit_llm.shared_prefix import shared_prefix_target_logprobs
from lit_llm.stages.dpo import METRICS, DPOModule, batch_keys, no_grad_context
from tests.conftest import REPO

DPO_TINY = str(REPO / "configs" / "dpo" / "tiny.yaml")


def ckpt(run: Path) -> str:
    return str(run / "checkpoints" / "last.ckpt")


def micro_data(module: DPOModule, **kwargs) -> PreferenceDataModule:
    options = dict(num_pairs=24, num_ranked=4, num_val_pairs=8, num_val_ranked=0, max_length=64, batch_size=4)
    dm = PreferenceDataModule(**{**options, **kwargs})
    dm.tokenizer = module.tokenizer
    dm.setup("fit")
    return dm


# --------------------------------------------------------------------------------------------------- losses
def test_each_loss_variant_matches_hand_computation() -> None:
    pc, pr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    h = dpo_logratios(pc, pr, rc, rr)
    assert h.tolist() == [(-3.0 + 3.5) - (-4.0 + 3.0), (-5.0 + 4.0) - (-2.0 + 3.0)]  # [1.5, -2.0]
    beta = 0.5
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    for i, hv in enumerate([1.5, -2.0]):
        assert dpo_sigmoid_loss(h, beta)[i].item() == pytest.approx(-math.log(sig(beta * hv)), abs=1e-6)
        want_cdpo = -0.9 * math.log(sig(beta * hv)) - 0.1 * math.log(sig(-beta * hv))
        assert cdpo_loss(h, beta, 0.1)[i].item() == pytest.approx(want_cdpo, abs=1e-6)
        assert ipo_loss(h, beta)[i].item() == pytest.approx((hv - 1.0 / (2 * beta)) ** 2, abs=1e-6)
        assert hinge_loss(h, beta)[i].item() == pytest.approx(max(0.0, 1.0 - beta * hv), abs=1e-6)
    assert torch.allclose(cdpo_loss(h, beta, 0.0), dpo_sigmoid_loss(h, beta))
    assert rpo_nll_loss(pc, torch.tensor([3, 10])).tolist() == pytest.approx([1.0, 0.5])
    assert dpo_sigmoid_loss(torch.zeros(3), 0.1).tolist() == pytest.approx([math.log(2)] * 3, abs=1e-7)


# ----------------------------------------------------------------------------------------- the module
def test_first_loss_is_ln2_and_reference_is_frozen_outside_the_module(tiny_pretrain: Path) -> None:
    module = DPOModule(ckpt(tiny_pretrain))
    batch = next(iter(micro_data(module).train_dataloader()))
    out = module.compute(batch)
    assert abs(out["loss"].item() - math.log(2)) < 1e-6
    assert torch.all(out["reward_margin"] == 0) and torch.all(out["reward_accuracy"] == 0.5)
    assert all(not p.requires_grad for p in module.reference.parameters()) and not module.reference.training
    assert not any("reference" in k for k in module.state_dict())
    assert sum(p.numel() for p in module.parameters()) == module.model.num_params()
    with pytest.raises(ValueError, match="loss_type"):
        DPOModule(ckpt(tiny_pretrain), loss_type="kto")


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "two-passes"])
def test_each_prompt_runs_once_with_the_whole_rows_values_and_gradients(
        tiny_pretrain: Path, packed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """DPO's sequence log-probs share each prompt's pass between its responses (pairs and ranked lists of 4), in
    one packed pass (short rows) or two, their position-wise work on the real tokens only: the values and
    gradients of one forward of the whole rows; a prompt truncated differently for two of its responses makes the
    batch run whole."""
    def unused(*args: object) -> None:
        raise AssertionError("the other way ran")

    skipped: list[torch.Tensor] = []  # the real-token masks `hidden_states(skip_padding=True)` ran with
    monkeypatch.setattr(model_module, "Unpadded", lambda real: skipped.append(real) or Unpadded(real))

    if packed:
        monkeypatch.setattr(shared_prefix, "shared_prefix_hidden", unused)
    else:
        monkeypatch.setattr(shared_prefix, "PACKED_MAX_TOKENS", 0)
        monkeypatch.setattr(shared_prefix, "packed_prefix_hidden", unused)
    module = DPOModule(ckpt(tiny_pretrain))
    batch = next(iter(micro_data(module, num_pairs=6, num_ranked=4, batch_size=6).train_dataloader()))
    assert batch["sequence_prompt_index"].bincount().max() == 4  # a ranked list in the batch
    model = module.model
    results = []
    for forward in (lambda: shared_prefix_target_logprobs(model, batch["input_ids"], batch["labels"],
                                                          batch["sequence_prompt_index"]),
                    lambda: model.target_logprobs(model.hidden_states(batch["input_ids"], batch["attention_mask"]),
                                                  batch["labels"]).sum(-1)):
        model.zero_grad()
        values = forward()
        values.sum().backward()
        results.append((values.detach(), [p.grad.clone() for p in model.parameters()]))
    (shared, shared_grads), (whole, whole_grads) = results
    assert len(skipped) == (1 if packed else 2) and not all(bool(real.all()) for real in skipped)
    torch.testing.assert_close(shared, whole, atol=2e-5, rtol=1e-6)
    for grad, expected in zip(shared_grads, whole_grads):
        torch.testing.assert_close(grad, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(module.sequence_logprobs(model, batch), whole, atol=2e-5, rtol=1e-6)
    cut = {**batch, "input_ids": batch["input_ids"].clone()}
    cut["input_ids"][0, 1] += 1  # row 0's prompt now differs from its prompt's other responses
    assert shared_prefix_target_logprobs(model, cut["input_ids"], cut["labels"], cut["sequence_prompt_index"]) is None


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def fit_losses(init_from: str, precompute: bool, loss_type: str, root: Path) -> list[float]:
    pl.seed_everything(0)
    module = DPOModule(init_from, precompute_ref_logprobs=precompute, loss_type=loss_type, rpo_alpha=0.5)
    module.optim.lr, module.optim.warmup_steps = 1e-2, 0  # move the policy away from the reference quickly
    recorder = LossRecorder()
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[recorder], default_root_dir=root)
    trainer.fit(module, datamodule=PreferenceDataModule(num_pairs=12, num_ranked=4, num_val_pairs=4,
                                                        num_val_ranked=0, max_length=64, batch_size=4,
                                                        tokenizer_from=init_from))
    assert (module.reference is None) == precompute  # freed after precomputing
    return recorder.losses


def test_precomputed_reference_logprobs_give_the_per_step_losses(tiny_pretrain: Path, tmp_path: Path) -> None:
    per_step = fit_losses(ckpt(tiny_pretrain), False, "ipo", tmp_path)
    cached = fit_losses(ckpt(tiny_pretrain), True, "ipo", tmp_path)
    assert len(per_step) == 4 and len(set(per_step)) > 1  # the policy moved, so the reference matters
    assert cached == pytest.approx(per_step, abs=1e-4)


def test_the_precompute_runs_in_inference_mode_with_the_values_of_no_grad(tiny_pretrain: Path) -> None:
    module = DPOModule(ckpt(tiny_pretrain))
    data = PreferenceDataModule(num_pairs=12, num_ranked=4, num_val_pairs=4, num_val_ranked=0, max_length=64,
                                batch_size=4, tokenizer_from=ckpt(tiny_pretrain))
    data.setup("fit")
    batches = list(data.train_dataloader())
    with torch.no_grad(), module.reference_model() as reference:
        expected = {k: v for batch in batches
                    for k, v in zip(batch_keys(batch), module.sequence_logprobs(reference, batch).tolist())}
    assert isinstance(no_grad_context(), torch.inference_mode)  # no process group here
    modes, score = [], module.sequence_logprobs
    module.sequence_logprobs = lambda *args: modes.append(torch.is_inference_mode_enabled()) or score(*args)
    assert module.precompute([batches]) == expected  # bit for bit
    assert modes == [True] * len(batches)


# ------------------------------------------------------------------------------------------ end to end
def test_micro_dpo_run_through_the_cli_keeps_the_reference_out_of_the_checkpoint(
        tiny_pretrain: Path, tmp_path: Path, mlflow_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "dpo"
    details = []  # each training step's metrics besides the loss, logged or not
    log_train_step = DPOModule.log_train_step
    monkeypatch.setattr(DPOModule, "log_train_step", lambda self, loss, get: details.append(get()) or
                        log_train_step(self, loss, get))
    main(["fit", "--config", DPO_TINY, "--model.init_args.init_from=" + ckpt(tiny_pretrain),
          "--trainer.max_steps=4", "--trainer.val_check_interval=4", "--trainer.log_every_n_steps=2",
          f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", "--trainer.logger.init_args.experiment_name=tests",
          "--gold.examples=4", "--gold.max_new_tokens=4",
          "--data.init_args.source=tasks", "--data.init_args.num_pairs=16", "--data.init_args.num_val_pairs=4",
          "--data.init_args.max_length=64", "--data.init_args.batch_size=4"])
    checkpoint = read_checkpoint(root / "checkpoints" / "last.ckpt")
    policy_keys = {k for k in checkpoint["state_dict"] if k.startswith("model.")}
    assert set(checkpoint["state_dict"]) == policy_keys  # the reference's weights are not stored
    start = read_checkpoint(ckpt(tiny_pretrain))["state_dict"]
    assert policy_keys == {k for k in start if k.startswith("model.")}
    assert checkpoint["lit_llm"]["stage"] == "dpo"
    client = MlflowClient(mlflow_db)
    run = client.get_run(checkpoint["lit_llm"]["mlflow_run_id"])
    assert run.data.tags["lit_llm.stage"] == "dpo"
    n_policy = sum(read_checkpoint(ckpt(tiny_pretrain))["state_dict"][k].numel() for k in policy_keys
                   if k != "model.lm_head.weight")  # tied to the embedding: counted once
    assert run.data.params["model/trainable_params"] == str(n_policy)  # the frozen reference is not the module's
    assert run.data.params["model/trainable_share"] == "1.0"
    assert run.data.tags["lit_llm.parent_run_id"] == read_checkpoint(ckpt(tiny_pretrain))["lit_llm"]["mlflow_run_id"]
    for name in ("train/loss", "train/reward_margin", "train/reward_accuracy", "train/logps_chosen",
                 "val/loss", "val/rewards_chosen", "val/reward_accuracy", "val/gold_accuracy"):
        assert name in run.data.metrics, name
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(details) == 4 and len(loss_steps) == 2  # 4 steps, written every 2
    for name in METRICS[1:]:  # logged on the steps the logger writes, with those steps' values
        history = sorted(client.get_metric_history(run.info.run_id, f"train/{name}"), key=lambda m: m.step)
        assert [m.step for m in history] == loss_steps, name
        assert [m.value for m in history] == pytest.approx([float(details[i][name]) for i in (1, 3)]), name
