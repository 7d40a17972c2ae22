"""When `last.ckpt` is written: `StageCheckpoint`, the default checkpoint callback of every run, and the stop on a
signal that saves first (`StopRequested`)."""

import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn


class StopRequested(SystemExit):
    """Training stopped on SIGTERM or Ctrl-C after writing `last.ckpt`; the exit status is 128 + the signal's
    number (143 for SIGTERM, 130 for SIGINT), as a shell reports a process stopped by it."""


class StageCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose default directory is `<trainer.default_root_dir>/checkpoints`, with `last.ckpt`.

    A fixed, predictable place per run directory lets a later stage's config name `init_from` ahead of time.
    `last.ckpt` is always the newest state: it is written at every validation and epoch end, on the triggers below,
    and overwritten in place by a resumed run (no `last-v1.ckpt`).

    Args:
        dirpath: Checkpoint folder (default `<trainer.default_root_dir>/checkpoints`).
        save_last: Write `last.ckpt`.
        every_n_train_steps: Also write it every N optimizer steps.
        train_time_interval: Also write it when this much time ("h:m:s") has passed since the last write; None =
            off. Unlike ModelCheckpoint's option of the same name, it adds to the other triggers instead of
            replacing the saves at validation and epoch ends.
        save_on_signal: On SIGTERM (a scheduler's preemption, `kill`) or a first Ctrl-C, finish the current step,
            write `last.ckpt` and stop with exit status 128 + signal (143, 130); the MLflow run ends KILLED. A
            second Ctrl-C stops at once. Resume with `--ckpt_path=last`.
        enable_version_counter: Write `last-v1.ckpt` instead of overwriting an existing `last.ckpt`.
        **kwargs: Other `ModelCheckpoint` options (`monitor`, `mode`, `filename`, ...).
    """

    def __init__(self, dirpath: str | None = None, save_last: bool = True, every_n_train_steps: int | None = None,
                 train_time_interval: timedelta | None = timedelta(minutes=30), save_on_signal: bool = True,
                 enable_version_counter: bool = False, **kwargs: Any) -> None:
        super().__init__(dirpath=dirpath, save_last=save_last, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=enable_version_counter, **kwargs)
        self.time_interval, self.save_on_signal = train_time_interval, save_on_signal
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._last_write = time.monotonic()

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)

    # ------------------------------------------------------------------------------ stop on a signal
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Take SIGTERM and SIGINT over from here on (Lightning's own SIGTERM handler is installed just before and
        would stop without a checkpoint); the trainer's teardown restores the handlers from before `fit`."""
        self._last_write = time.monotonic()
        if self.save_on_signal and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._request_stop)

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._stop_signal = signum
        rank_zero_warn(f"received {signal.Signals(signum).name}: stopping after this step, writing last.ckpt "
                       f"first (Ctrl-C again to stop at once)")

    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """Write the final state when the last step was not a save point (max_steps between validations)."""
        if self._last_global_step_saved != trainer.global_step and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    # ------------------------------------------------------------------------------ extra triggers
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._last_global_step_saved == trainer.global_step:
            self._last_write = time.monotonic()
        stop, due = self._agreed_triggers(trainer, pl_module)
        if (stop or due) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_write = time.monotonic()
        if stop:
            self._stop(trainer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        super().on_validation_end(trainer, pl_module)
        if self._last_global_step_saved == trainer.global_step:
            self._last_write = time.monotonic()

    def _agreed_triggers(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> tuple[bool, bool]:
        """(stop requested on any rank, write due on rank 0's clock): every rank must save, or stop, together."""
        due = self.time_interval is not None and time.monotonic() - self._last_write >= \
            self.time_interval.total_seconds()
        flags = [float(self._stop_signal is not None), float(due)]
        if trainer.world_size > 1:
            flags = torch.tensor([flags[0], flags[1] * trainer.is_global_zero], device=pl_module.device)
            flags = trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        return flags[0] > 0, flags[1] > 0

    def _stop(self, trainer: "pl.Trainer") -> None:
        signum = self._stop_signal or signal.SIGTERM
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            print(f"stopped on {name} at step {trainer.global_step}: wrote {self.last_model_path}; resume with "
                  f"--ckpt_path={self.last_model_path} (or run the same pipeline again)", file=sys.stderr, flush=True)
        raise StopRequested(128 + int(signum))
