"""NaN and inf: `NonFiniteGuard` stops the run, or skips the update, when a loss or a gradient is not finite."""

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lit_llm.callbacks import mlflow_logger
from lit_llm.tracking import Tag


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite."""


class NonFiniteGuard(pl.Callback):
    """Stops the run, or skips the update, when a loss or a gradient is NaN or infinite.

    The loss is checked before each backward pass and every gradient before each optimizer step (all ranks agree
    on the verdict). "stop" raises `NonFiniteError` before the update, so the weights and the last checkpoint stay
    the last good state. "skip" drops the update: every gradient is set to None, so the optimizer leaves each
    parameter and its moments alone (the step counter and learning-rate schedule still advance). Each event is
    recorded in MLflow: the tag `lit_llm.nonfinite` holds the last message, the metric `train/nonfinite_skipped`
    counts skipped updates. On by default (action "stop"); configure it with
    `--trainer.callbacks+=lit_llm.nonfinite.NonFiniteGuard --trainer.callbacks.action=skip`.

    Args:
        action: "stop" or "skip".
        max_skips: In "skip" mode, stop anyway after this many skipped updates (a run that keeps diverging
            should not go on silently).
    """

    def __init__(self, action: str = "stop", max_skips: int = 10) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"NonFiniteGuard action must be 'stop' or 'skip', got {action!r}")
        self.action, self.max_skips = action, max_skips
        self.skipped = 0
        self._bad_loss: str | None = None

    def on_before_backward(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", loss: Any) -> None:
        if not torch.isfinite(loss.detach()).all():
            self._bad_loss = f"loss {loss.detach().float().mean().item()}"
            if self.action == "stop" and trainer.world_size == 1:  # with several ranks, decide together below
                self.fail(trainer, self._bad_loss)

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Any) -> None:
        bad = self.nonfinite_gradients(pl_module, optimizer)
        flagged = torch.tensor(float(bool(bad) or self._bad_loss is not None), device=pl_module.device)
        if float(trainer.strategy.reduce(flagged, reduce_op="sum")) == 0:
            return
        what = self._bad_loss or (f"gradients of {', '.join(bad[:3])}" + (" ..." if len(bad) > 3 else "")
                                  if bad else "gradients on another rank")
        self._bad_loss = None
        if self.action == "stop" or self.skipped >= self.max_skips:
            self.fail(trainer, what)
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None
        self.skipped += 1
        self.record(trainer, f"non-finite {what} at step {trainer.global_step}: update skipped "
                             f"({self.skipped} so far)")

    @staticmethod
    def nonfinite_gradients(pl_module: "pl.LightningModule", optimizer: Any) -> list[str]:
        """Names of the parameters whose gradient holds a NaN or inf (one sync for all of them)."""
        names = {id(p): n for n, p in pl_module.named_parameters()}
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return []
        norms = torch.stack(torch._foreach_norm([p.grad for p in params]))
        bad = (~torch.isfinite(norms)).nonzero().flatten().tolist()
        return [names.get(id(params[i]), "?") for i in bad]

    def fail(self, trainer: "pl.Trainer", what: str) -> None:
        last = next((c.last_model_path for c in trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")),
                    None)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        message = (f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); stopped before "
                   f"the update, so {where}. Lower the learning rate, clip gradients, or skip such batches with "
                   f"NonFiniteGuard(action='skip')")
        self.record(trainer, message)
        raise NonFiniteError(message)

    def record(self, trainer: "pl.Trainer", message: str) -> None:
        rank_zero_warn(message)
        logger = mlflow_logger(trainer)
        if logger is not None and trainer.is_global_zero:
            logger.experiment.set_tag(logger.run_id, Tag.NONFINITE, message[:5000])
            logger.log_metrics({"train/nonfinite_skipped": float(self.skipped)}, step=trainer.global_step)
