"""DPOModule: direct preference optimisation of a policy against a frozen reference (Rafailov et al. 2023).

Batches come from `lit_llm.data.preference.PreferenceDataModule` (the reward stage's data): every response of a
batch is one row of `input_ids` (N, T), already right-padded to a common length and stacked on the batch
dimension, with pairs given as row indices. So chosen and rejected go through the policy in ONE forward pass,
and a response shared by several pairs (ranked lists) is computed once. The sequence log-prob of a row is the
sum of `token_logprobs` over its response targets (the data module's labels ignore prompt and padding).

Losses (`loss_type`, pure functions in `lit_llm.losses` on h = the log-ratio difference): "sigmoid" (DPO),
"cdpo" (label-smoothed DPO, `label_smoothing` ε), "ipo", "hinge" (SLiC); `rpo_alpha` > 0 adds α·NLL per chosen
token (RPO). Per-pair losses are reduced as the reward stage does: sum(weight · loss) / num_prompts, so each
prompt counts once (the mean over pairs for plain pair data).

Reference model: loaded from `ref_from` (default: the `init_from` weights), frozen (requires_grad False, eval
mode) and kept OUT of the module's registered submodules, so its weights never land in the policy's checkpoint
and the optimizer never sees them; the module moves it to its device itself. With `lora` and no `ref_from` there
is no second copy: the reference is the policy with its adapters disabled (its base, exactly). With
`precompute_ref_logprobs`, the reference scores every train and validation sequence once in `on_fit_start`, keyed
by the sequence's tokens (so shuffling, and the same response appearing in several prompts, do not matter), and
is then freed.

Metrics: loss, rewards β·(log π − log π_ref) of chosen/rejected, reward_margin, reward_accuracy (share of pairs
whose chosen reward is higher; a tie counts half), logps_chosen/logps_rejected, under train/ and val/ (val
weighted per prompt like the loss); `evaluation.GoldEval` adds val/gold_accuracy, as in every stage that
generates.

Deliberate simplifications: the precomputed cache is not stored in checkpoints (a resumed run recomputes it);
with several devices every rank precomputes the whole dataset.
"""

from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader

from lit_llm.losses import (IGNORE_INDEX, cdpo_loss, dpo_logratios, dpo_sigmoid_loss, hinge_loss, ipo_loss,
                            rpo_nll_loss)
from lit_llm.lora import LoRAConfig
from lit_llm.model import Transformer
from lit_llm.optim import OptimConfig
from lit_llm.shared_prefix import shared_prefix_target_logprobs
from lit_llm.stages.base import StageModule

LossType = Literal["sigmoid", "cdpo", "ipo", "hinge"]
# loss_type -> f(h (P,), beta, label_smoothing) -> (P,) per-pair losses
PAIR_LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": lambda h, beta, eps: dpo_sigmoid_loss(h, beta),
    "cdpo": cdpo_loss,
    "ipo": lambda h, beta, eps: ipo_loss(h, beta),
    "hinge": lambda h, beta, eps: hinge_loss(h, beta),
}
METRICS = ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "logps_chosen",
           "logps_rejected")


def sequence_key(input_ids: torch.Tensor, labels: torch.Tensor, length: int) -> bytes:
    """Cache key of one row: its real tokens and targets (identical rows have identical log-probs)."""
    return input_ids[:length].cpu().numpy().tobytes() + b"|" + labels[:length].cpu().numpy().tobytes()


def no_grad_context() -> torch.no_grad | torch.inference_mode:
    """torch.inference_mode, or no_grad in a gloo process group (Lightning's choice for its evaluation loops)."""
    dist = torch.distributed
    gloo = dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo"
    return torch.no_grad() if gloo else torch.inference_mode()


def batch_keys(batch: dict[str, torch.Tensor]) -> list[bytes]:
    lengths = batch["attention_mask"].sum(-1).tolist()
    return [sequence_key(batch["input_ids"][i], batch["labels"][i], n) for i, n in enumerate(lengths)]


class DPOModule(StageModule):
    """Direct preference optimisation stage.

    Args:
        init_from: Policy's starting weights and tokenizer: a lit_llm `.ckpt` (usually the SFT run's last.ckpt)
            or a Hugging Face directory or hub id. Required.
        ref_from: Reference model (same formats); default: the `init_from` weights.
        optim: Optimizer and schedule.
        lora: Train low-rank adapters instead of all weights (`lit_llm.lora.LoRAConfig`: r, alpha, dropout,
            target_modules, modules_to_save); None = full fine-tuning.
        beta: β, strength of the implicit KL penalty (the rewards are β·(log π − log π_ref)).
        loss_type: "sigmoid" (DPO), "cdpo" (label-smoothed DPO), "ipo" or "hinge" (SLiC).
        label_smoothing: cDPO's label-flip probability ε (loss_type "cdpo" only).
        rpo_alpha: Weight α of the NLL per chosen token (RPO); 0 = off.
        precompute_ref_logprobs: Score all sequences with the reference once before training, then free it
            (default: the data of offline DPO does not change, so a forward per step would repeat the same work).
        activation_checkpointing: Recompute each block in the backward pass to save activation memory.
    """

    stage = "dpo"

    def __init__(
        self,
        init_from: str,
        ref_from: str | None = None,
        optim: OptimConfig | None = None,
        lora: LoRAConfig | None = None,
        beta: float = 0.1,
        loss_type: LossType = "sigmoid",
        label_smoothing: float = 0.0,
        rpo_alpha: float = 0.0,
        precompute_ref_logprobs: bool = True,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__(optim, lora)
        if loss_type not in PAIR_LOSSES:
            raise ValueError(f"loss_type must be one of {sorted(PAIR_LOSSES)}, got {loss_type!r}")
        if label_smoothing and loss_type != "cdpo":
            raise ValueError(f"label_smoothing applies to loss_type 'cdpo' only, not {loss_type!r}")
        self.init_from, self.ref_from = init_from, ref_from
        self.beta, self.loss_type, self.label_smoothing, self.rpo_alpha = beta, loss_type, label_smoothing, rpo_alpha
        self.precompute_ref_logprobs = precompute_ref_logprobs
        self.load_starting_model(init_from, activation_checkpointing)
        self.set_frozen("reference", self.load_reference(ref_from))
        self.ref_cache: dict[bytes, float] | None = None
        self.val_metrics = nn.ModuleDict({name: torchmetrics.MeanMetric() for name in METRICS})

    # ----------------------------------------------------------------------------------------- log-probs
    def sequence_logprobs(self, model: Transformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) float32 sum of log-probs over each row's response targets. Each prompt runs once and its responses
        share its keys/values (`lit_llm.shared_prefix`); with activation checkpointing, or a prompt whose responses
        were truncated differently, all rows run whole in one forward pass."""
        if not model.activation_checkpointing:
            shared = shared_prefix_target_logprobs(model, batch["input_ids"], batch["labels"],
                                                   batch["sequence_prompt_index"])
            if shared is not None:
                return shared
        hidden = model.hidden_states(batch["input_ids"], attention_mask=batch["attention_mask"])  # (N, T, d)
        return model.target_logprobs(hidden, batch["labels"]).sum(-1)  # the head on response positions only

    @torch.no_grad()
    def reference_logprobs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) reference log-probs: from the precomputed cache when there is one, else a forward pass."""
        if self.ref_cache is not None:
            keys = batch_keys(batch)
            if all(k in self.ref_cache for k in keys):
                return torch.tensor([self.ref_cache[k] for k in keys], device=batch["input_ids"].device)
        with self.reference_model() as reference:
            return self.sequence_logprobs(reference, batch)

    def precompute(self, loaders: Iterable[Iterable[dict[str, torch.Tensor]]]) -> dict[bytes, float]:
        """Reference log-probs of every sequence of the loaders, keyed by `sequence_key`. In inference mode (1.1x
        no_grad on a CPU, the same values; its results are plain floats), as Lightning's validation, except under
        gloo, where Lightning avoids it too."""
        cache = {}
        with no_grad_context(), self.reference_model() as model:
            for loader in loaders:
                for batch in loader:
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    cache.update(zip(batch_keys(batch), self.sequence_logprobs(model, batch).tolist()))
        return cache

    def on_fit_start(self) -> None:
        """With `precompute_ref_logprobs`: score the train and val data with the reference once, then free it."""
        super().on_fit_start()
        if not self.precompute_ref_logprobs or self.ref_cache is not None:
            return
        datamodule = self.trainer.datamodule
        # All of the train data, in file order, on every rank: the training loader's order (and, under DDP, a
        # rank's share) changes every epoch, and calling it here would also use up a resumed run's data position.
        train = DataLoader(datamodule.datasets["train"], batch_size=datamodule.batch_size,
                           collate_fn=datamodule.collator())
        self.ref_cache = self.precompute([train, datamodule.val_dataloader()])
        self.set_frozen("reference", None)

    # ---------------------------------------------------------------------------------------------- loss
    def compute(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss and per-pair values of a batch (keys of `lit_llm.data.preference`)."""
        policy = self.sequence_logprobs(self.model, batch)  # (N,)
        ref = self.reference_logprobs(batch)  # (N,)
        c, r = batch["chosen_index"], batch["rejected_index"]  # (P,) rows
        h = dpo_logratios(policy[c], policy[r], ref[c], ref[r])  # (P,)
        per_pair = PAIR_LOSSES[self.loss_type](h, self.beta, self.label_smoothing)
        if self.rpo_alpha:
            tokens = (batch["labels"] != IGNORE_INDEX).sum(-1)  # (N,) response tokens per row
            per_pair = per_pair + self.rpo_alpha * rpo_nll_loss(policy[c], tokens[c])
        rewards_c = self.beta * (policy[c] - ref[c]).detach()
        rewards_r = self.beta * (policy[r] - ref[r]).detach()
        wins = (rewards_c > rewards_r).float() + 0.5 * (rewards_c == rewards_r).float()
        return {"loss": (batch["weight"] * per_pair).sum() / batch["num_prompts"], "per_pair": per_pair.detach(),
                "rewards_chosen": rewards_c, "rewards_rejected": rewards_r, "reward_margin": rewards_c - rewards_r,
                "reward_accuracy": wins, "logps_chosen": policy[c].detach(), "logps_rejected": policy[r].detach()}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.compute(batch)
        w = batch["weight"]
        self.log_train_step(out["loss"], lambda: {name: (w * out[name]).sum() / w.sum() for name in METRICS[1:]})
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.compute(batch)
        for name in METRICS:
            value = out["per_pair"] if name == "loss" else out[name]
            self.val_metrics[name].update(value, weight=batch["weight"])  # weighted: each prompt counts once
            self.log(f"val/{name}", self.val_metrics[name], prog_bar=name == "reward_accuracy")
