"""Callbacks that inject faults into a real run, for the reliability tests (added with `--trainer.callbacks+=`)."""

import os
import signal
from typing import Any

import lightning.pytorch as pl
import torch


def kill_now() -> None:
    """SIGKILL this process: no clean shutdown, no `finally`, no atexit."""
    os.kill(os.getpid(), signal.SIGKILL)


class _KillWhenPickled:
    """Kills the process while `torch.save` serialises it, i.e. in the middle of writing a checkpoint."""

    def __reduce__(self):
        kill_now()


class KillAt(pl.Callback):
    """SIGKILLs the run at optimizer step `step`.

    Args:
        step: The global step at which to die.
        during_save: Die while the checkpoint of that step is being written (else: mid-step, after the backward
            pass and before the weights change).
    """

    def __init__(self, step: int, during_save: bool = False) -> None:
        self.step, self.during_save = step, during_save
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        self._trainer = trainer

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Any) -> None:
        if not self.during_save and trainer.global_step == self.step:
            kill_now()

    def state_dict(self) -> dict[str, Any]:
        saving_step = self._trainer.global_step if self._trainer is not None else -1
        return {"boom": _KillWhenPickled()} if self.during_save and saving_step == self.step else {}


class PoisonAt(pl.Callback):
    """Makes the backbone's output NaN (so the loss and gradients are NaN) during the training batches whose
    global step is in `steps`."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = set(steps)
        self._hook: Any = None

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step in self.steps and self._hook is None:
            self._hook = pl_module.model.norm.register_forward_hook(lambda m, i, out: out * torch.nan)

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class SignalAt(pl.Callback):
    """Sends this process a signal (SIGTERM by default, as a job scheduler does) at optimizer step `step`, before
    the optimizer's update: the run should finish that step, write last.ckpt and stop.

    Args:
        step: The global step at which the signal arrives.
        signum: The signal's number (15 = SIGTERM, 2 = SIGINT, as Ctrl-C sends).
    """

    def __init__(self, step: int, signum: int = 15) -> None:
        self.step, self.signum = step, signum
        self.sent = False

    def on_before_optimizer_step(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule",
                                 optimizer: Any) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
