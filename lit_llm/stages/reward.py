"""RewardModule: a reward model, the backbone plus a scalar head, trained on preference comparisons.

The reward of a prompt + response is the head's value at the sequence's last real token (`last_token_index`, any
padding side); the data module ends every sequence at the response's end-of-turn token, as a sampled response
ends, so PPO scores its rollouts the way the model was trained. Losses (see `lit_llm.losses`):
    pairs: Bradley–Terry −log σ(r_c − r_r − m) per pair, weighted (1 per pair, 1/C(K,2) per pair of a ranked list
        of K) and summed per batch over the number of prompts, so each prompt counts once (InstructGPT);
        plus `center_coef`·(r_c + r_r)² when `center_coef` > 0 (reward centring, Eisenstein et al. 2023);
    scores: mean squared error to the score (regression) for batches that carry scores.
Pair accuracy counts a tie as half a win (an untrained, zero-initialised head scores 0.5, i.e. chance).

Layout: the backbone lives under `self.model` (state-dict prefix "model.", so `load_backbone` reads reward
checkpoints like any other) and the head under `self.head` (keys "head.weight", "head.bias", the layout of
`ScalarHead.head`). The backbone is loaded in `__init__` from `init_from` because the data module tokenizes with
the model's tokenizer in its `setup`, which Lightning runs before the module's `configure_model`; when
`init_from` is a reward checkpoint its head (and reward statistics) are loaded too.

After training (`on_train_end`, all ranks), the reward's mean and std over a fixed sample of training sequences
are stored in the buffers `reward_mean` / `reward_std` (in the state dict) and in
`checkpoint["lit_llm"]["reward_stats"]`, and every checkpoint callback's `last.ckpt` is written again so it
carries them; PPO and rejection sampling normalise rewards with them (`rollout.load_reward_model`).

Deliberate simplification: the statistics are over the training data's responses (chosen and rejected alike),
not over the policy's samples.
"""

import math
from typing import Any

import torch
import torchmetrics
from torch import nn

from lit_llm.checkpoint import META_KEY
from lit_llm.losses import IGNORE_INDEX, reward_centering_loss, reward_pair_loss, reward_regression_loss
from lit_llm.model import ScalarHead, last_token_index
from lit_llm.lora import LoRAConfig
from lit_llm.optim import OptimConfig
from lit_llm.stages.base import StageModule

VAL_METRICS = ("loss", "pair_accuracy", "reward_chosen", "reward_rejected", "reward_margin", "mse")


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w·x) / sum(w) of (P,) values and weights."""
    return (weights * values).sum() / weights.sum()


def train_details(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A training batch's metrics besides the loss (weighted per prompt, as the loss)."""
    details = {}
    if "chosen" in out:
        w, chosen, rejected = out["weight"], out["chosen"].detach(), out["rejected"].detach()
        details.update(pair_accuracy=weighted_mean(pair_wins(chosen, rejected), w),
                       reward_chosen=weighted_mean(chosen, w), reward_rejected=weighted_mean(rejected, w),
                       reward_margin=weighted_mean(chosen - rejected, w))
    if "mse" in out:
        details["mse"] = out["mse"]
    return details


def pair_wins(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """(P,) 1 where the chosen reward is higher, 0.5 on a tie, else 0."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


class RewardModule(StageModule):
    """Reward-model stage.

    Args:
        init_from: Starting weights and tokenizer: a lit_llm `.ckpt` (usually the SFT run's last.ckpt; a reward
            checkpoint also brings its head) or a Hugging Face directory or hub id. Required.
        optim: Optimizer and schedule.
        lora: Train low-rank adapters instead of all weights (`lit_llm.lora.LoRAConfig`: r, alpha, dropout,
            target_modules, modules_to_save); None = full fine-tuning.
        center_coef: Weight of the reward-centring term (r_c + r_r)² (Eisenstein et al. 2023 use 0.01); 0 = off.
        stats_prompts: Training prompts whose responses give the reward's mean and std after training.
        activation_checkpointing: Recompute each block in the backward pass to save activation memory.
        num_samples: Validation pairs (with their rewards) logged to MLflow as a table at each validation.
    """

    stage = "reward"
    generates = False  # a scalar head: no answers for the gold evaluation

    def __init__(
        self,
        init_from: str,
        optim: OptimConfig | None = None,
        lora: LoRAConfig | None = None,
        center_coef: float = 0.0,
        stats_prompts: int = 512,
        activation_checkpointing: bool = False,
        num_samples: int = 4,
    ) -> None:
        super().__init__(optim, lora)
        self.init_from, self.center_coef, self.stats_prompts = init_from, center_coef, stats_prompts
        self.num_samples = num_samples
        loaded = self.load_starting_model(init_from, activation_checkpointing)
        self.head = ScalarHead(self.model).head  # only the head is registered here; the backbone is self.model
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.reward_stats: dict[str, Any] | None = None
        if loaded.stage == self.stage:
            self.load_state_dict({k: v for k, v in loaded.state_dict.items() if not k.startswith("model.")},
                                 strict=False)
            self.reward_stats = loaded.meta.get("reward_stats")
        self.val_metrics = nn.ModuleDict({name: torchmetrics.MeanMetric() for name in VAL_METRICS})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N,) float32 rewards: the head at the last real token of each (N, T) sequence."""
        hidden = self.model.hidden_states(input_ids, attention_mask)  # (N, T, d_model)
        last = hidden[torch.arange(hidden.size(0), device=hidden.device), last_token_index(attention_mask)]
        return self.head(last).squeeze(-1).float()  # the head on one position per row, as ScalarHead.score

    def scalar_head(self) -> ScalarHead:
        """A `ScalarHead` sharing this module's backbone and head (what `rollout.load_reward_model` returns)."""
        scorer = ScalarHead(self.model)
        scorer.head = self.head
        return scorer

    # ------------------------------------------------------------------------------------------ losses
    def compute(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rewards, the loss and the per-pair values of a batch (see `lit_llm.data.preference` for its keys)."""
        rewards = self(batch["input_ids"], batch["attention_mask"])  # (N,)
        out = {"rewards": rewards, "loss": rewards.sum() * 0.0}
        if batch["chosen_index"].numel():
            chosen, rejected = rewards[batch["chosen_index"]], rewards[batch["rejected_index"]]  # (P,) each
            per_pair = reward_pair_loss(chosen, rejected, batch["margin"])
            if self.center_coef:
                per_pair = per_pair + self.center_coef * reward_centering_loss(chosen, rejected)
            # weights sum to 1 per prompt, so this is the mean over prompts of each prompt's mean pair loss
            out["loss"] = out["loss"] + (batch["weight"] * per_pair).sum() / batch["num_prompts"]
            out.update(chosen=chosen, rejected=rejected, per_pair=per_pair, weight=batch["weight"])
        if "score" in batch:
            out["mse"] = reward_regression_loss(rewards, batch["score"]).mean()
            out["loss"] = out["loss"] + out["mse"]
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.compute(batch)
        self.log_train_step(out["loss"], lambda: train_details(out))
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.compute(batch)
        if "chosen" in out:
            chosen, rejected, w = out["chosen"], out["rejected"], out["weight"]
            values = {"loss": out["per_pair"], "pair_accuracy": pair_wins(chosen, rejected),
                      "reward_chosen": chosen, "reward_rejected": rejected, "reward_margin": chosen - rejected}
            for name, value in values.items():
                self.val_metrics[name].update(value, weight=w)  # weighted: each prompt counts once
                self.log(f"val/{name}", self.val_metrics[name], prog_bar=name == "pair_accuracy")
            if batch_idx == 0:
                self.samples = self.sample_rows(batch, chosen, rejected)
        if "mse" in out:
            self.val_metrics["mse"].update(out["mse"], weight=batch["input_ids"].size(0))
            self.log("val/mse", self.val_metrics["mse"])

    def sample_rows(self, batch: dict[str, torch.Tensor], chosen: torch.Tensor,
                    rejected: torch.Tensor) -> list[dict]:
        """Up to `num_samples` validation pairs as text with their rewards (the MLflow samples table)."""
        def response(row: int) -> tuple[str, str]:
            ids, labels = batch["input_ids"][row], batch["labels"][row]
            start = int((labels != IGNORE_INDEX).nonzero()[0]) + 1  # first response token
            end = int(batch["attention_mask"][row].sum())
            return self.tokenizer.decode(ids[:start].tolist()).strip(), self.tokenizer.decode(ids[start:end].tolist())

        rows = []
        for p in range(min(self.num_samples, chosen.numel())):
            prompt, good = response(int(batch["chosen_index"][p]))
            _, bad = response(int(batch["rejected_index"][p]))
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad,
                         "reward_chosen": round(float(chosen[p]), 4), "reward_rejected": round(float(rejected[p]), 4)})
        return rows

    # ------------------------------------------------------------------------------- reward statistics
    @torch.no_grad()
    def compute_reward_stats(self) -> dict[str, Any]:
        """Mean and (population) std of the reward over a fixed sample of training sequences; every rank scores
        its share and the sums are reduced, so all ranks end with the same values."""
        datamodule = self.trainer.datamodule
        loader = datamodule.sample_dataloader(self.stats_prompts, self.global_rank, self.trainer.world_size)
        was_training = self.training
        self.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # count, sum, sum of squares
        for batch in loader:
            rewards = self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).double()
            sums += torch.stack([rewards.new_tensor(rewards.numel()), rewards.sum(), rewards.square().sum()])
        self.train(was_training)
        count, total, squares = self.trainer.strategy.reduce(sums, reduce_op="sum").tolist()
        mean = total / max(count, 1.0)
        std = math.sqrt(max(squares / max(count, 1.0) - mean**2, 0.0))
        self.reward_mean.fill_(mean)
        self.reward_std.fill_(max(std, 1e-6))  # a constant reward would otherwise divide by zero in PPO
        return {"mean": mean, "std": std, "num_sequences": int(count), "split": "train", "step": self.global_step}

    def on_train_end(self) -> None:
        """Store the reward statistics and write `last.ckpt` again so it carries them."""
        self.reward_stats = self.compute_reward_stats()
        for logger in self.loggers:
            logger.log_metrics({"reward_stats/mean": self.reward_stats["mean"],
                                "reward_stats/std": self.reward_stats["std"]}, step=self.global_step)
        for callback in self.trainer.checkpoint_callbacks:
            path = getattr(callback, "last_model_path", "")
            if path:  # collective call: every rank saves (rank 0 writes)
                self.trainer.save_checkpoint(path, weights_only=False)  # full state: resumable

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.reward_stats is not None:
            checkpoint[META_KEY]["reward_stats"] = dict(self.reward_stats)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.reward_stats = checkpoint.get(META_KEY, {}).get("reward_stats")
