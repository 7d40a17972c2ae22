"""SFTModule: supervised fine-tuning of a pretrained backbone on instruction and chat data.

The loss is next-token cross-entropy on the assistant's tokens only (the data module's labels carry
`IGNORE_INDEX` elsewhere), averaged over the target tokens of a batch; packed rows pass `doc_ids` so attention
and positions stay inside each example.

The backbone and its tokenizer are loaded in `__init__` from `init_from` (a lit_llm checkpoint of any stage or a
Hugging Face directory or hub id), because the data module tokenizes with the model's tokenizer in its `setup`, which
Lightning runs before the module's `configure_model`. The MLflow run of the starting checkpoint becomes this run's
parent (`lit_llm.parent_run_id`).

Validation: val/loss (token-weighted mean over the validation targets, so val/ppl = exp(val/loss) exactly) and
val/ppl; `evaluation.GoldEval` adds val/gold_accuracy (greedy answers to held-out task-world questions asked
through the chat template).

Deliberate simplification: train/loss is the mean over each batch's target tokens, so with gradient accumulation
batches with more targets do not weigh more.
"""

import torch
import torchmetrics

from lit_llm.losses import IGNORE_INDEX, causal_lm_loss
from lit_llm.lora import LoRAConfig
from lit_llm.optim import OptimConfig
from lit_llm.stages.base import StageModule


class SFTModule(StageModule):
    """Supervised fine-tuning stage.

    Args:
        init_from: Starting weights and tokenizer: a lit_llm `.ckpt` (e.g. the pretraining run's last.ckpt) or a
            Hugging Face directory or hub id. Required.
        optim: Optimizer and schedule.
        lora: Train low-rank adapters instead of all weights (`lit_llm.lora.LoRAConfig`: r, alpha, dropout,
            target_modules, modules_to_save); None = full fine-tuning.
        activation_checkpointing: Recompute each block in the backward pass to save activation memory.
    """

    stage = "sft"

    def __init__(
        self,
        init_from: str,
        optim: OptimConfig | None = None,
        lora: LoRAConfig | None = None,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__(optim, lora)
        self.init_from = init_from
        self.load_starting_model(init_from, activation_checkpointing)
        self.val_loss = torchmetrics.MeanMetric()

    def forward_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss over the batch's target tokens, and the number of target tokens."""
        hidden = self.model.hidden_states(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                          doc_ids=batch.get("doc_ids"))  # (B, T, d)
        labels = batch["labels"]  # (B, T), already shifted by the data module
        logits, targets = self.model.target_logits(hidden, labels)  # the head on response positions only
        return causal_lm_loss(logits, targets), (labels != IGNORE_INDEX).sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, n_targets = self.forward_loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss * self.rank_weight(n_targets)

    def rank_weight(self, n_targets: torch.Tensor) -> torch.Tensor | float:
        """Scale of this rank's token-mean loss so that DDP's mean of rank gradients is the mean over every rank's
        target tokens (n_r·W/N): without it ranks with few target tokens would count as much as ranks with many,
        and W processes would not train like one at the same global batch."""
        world = self.trainer.world_size
        if world == 1:
            return 1.0
        total = self.trainer.strategy.reduce(n_targets.float(), reduce_op="sum")
        return n_targets * world / total.clamp(min=1.0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, n_targets = self.forward_loss(batch)
        if n_targets > 0:
            self.val_loss.update(loss, weight=n_targets)

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True)
        self.log("val/ppl", torch.exp(loss))
