"""Progress a person can follow: a step bar in a terminal, plain lines in a log (and on stdout when it is not a
terminal, e.g. under `lit-llm pipeline > log` or a job scheduler), both counting optimizer steps.

Runs here are bound by `max_steps`, not epochs: Lightning's bar shows `Epoch 0/-2` (max_epochs unset) and restarts
every epoch, and without a terminal it prints nothing useful for as long as a stage runs.
"""

import os
import sys
import time
from datetime import timedelta
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

# the training metrics a progress line shows, when the stage logs them (those a stage logs only on the logger's
# steps, `StageModule.log_train_step`, show their latest logged value)
LINE_METRICS = ("train/loss", "train/reward", "train/kl", "train/reward_margin", "train/reward_accuracy",
                "train/pair_accuracy", "train/tokens_per_s")
PROGRESS_FILE = "progress.log"


def total_steps(trainer: "pl.Trainer") -> int | None:
    """The optimizer steps the run will make: max_steps, else the estimate from epochs (None if unknown)."""
    if trainer.max_steps and trainer.max_steps > 0:
        return trainer.max_steps
    estimate = trainer.estimated_stepping_batches
    return int(estimate) if estimate != float("inf") else None


def duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def metric_text(metrics: dict[str, Any], keys: tuple[str, ...] | None = None) -> str:
    """`loss 1.234 | tokens/s 5,678` for the given keys (default: every metric) that were logged."""
    parts = []
    for key in keys or sorted(metrics):
        if key in metrics:
            value = float(metrics[key])
            short = key.split("/", 1)[-1].replace("_per_s", "/s")
            parts.append(f"{short} {value:,.0f}" if abs(value) >= 1000 else f"{short} {value:.4g}")
    return " | ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """Lightning's terminal bar, counting optimizer steps to the run's total (not batches of an epoch); it
    disables itself when stderr is not a terminal (the `Progress` lines take over)."""

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not sys.stderr.isatty():
            self.disable()
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: "pl.Trainer", *_: Any) -> None:
        if self.is_disabled:
            return
        if trainer.current_epoch == 0 or self.train_progress_bar.total != total_steps(trainer):
            self.train_progress_bar.reset(total=total_steps(trainer))
            self.train_progress_bar.initial = 0
            self.train_progress_bar.set_description("steps")
        self.train_progress_bar.n = trainer.global_step

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.is_disabled:
            return
        if self._should_update(trainer.global_step, self.train_progress_bar.total or 0):
            self.train_progress_bar.n = trainer.global_step
            self.train_progress_bar.refresh()
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if not self.is_disabled:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


class Progress(pl.Callback):
    """Plain progress lines: `step 120/600 (20%) | loss 1.234 | tokens/s 5,678 | 0:01:35 elapsed, ETA 0:06:20`
    every `every_n_steps` steps or `every_seconds` seconds, whichever comes first, and the validation metrics after
    each validation. They go to `<trainer.default_root_dir>/progress.log` always, and to stdout when stdout is not
    a terminal (in a terminal the step bar shows the same). On by default.

    Args:
        every_n_steps: Print every this many optimizer steps; None: every 10% of the run.
        every_seconds: Print at least this often (seconds) while training.
        to_stdout: "auto" (when stdout is not a terminal), "always" or "never".
    """

    def __init__(self, every_n_steps: int | None = None, every_seconds: float = 60.0, to_stdout: str = "auto") -> None:
        if to_stdout not in ("auto", "always", "never"):
            raise ValueError(f"Progress(to_stdout=...) must be 'auto', 'always' or 'never', got {to_stdout!r}")
        self.every_n_steps, self.every_seconds, self.to_stdout = every_n_steps, every_seconds, to_stdout
        self._start = self._last = 0.0
        self._first_step = 0
        self._path: str | None = None

    def emit(self, trainer: "pl.Trainer", text: str) -> None:
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}"
        if self.to_stdout == "always" or (self.to_stdout == "auto" and not sys.stdout.isatty()):
            print(line, flush=True)
        if self._path:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write(line + "\n")

    @rank_zero_only
    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        self._path = os.path.join(trainer.default_root_dir, PROGRESS_FILE)
        self._start = self._last = time.monotonic()
        self._first_step = trainer.global_step
        total = total_steps(trainer)
        where = f"from step {trainer.global_step} " if trainer.global_step else ""
        stage = getattr(pl_module, "stage", type(pl_module).__name__)
        self.emit(trainer, f"{stage}: training {where}to step {total if total is not None else '?'} "
                           f"(progress also in {self._path})")

    @rank_zero_only
    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, total = trainer.global_step, total_steps(trainer)
        every = self.every_n_steps or max(1, (total or 100) // 10)
        now = time.monotonic()
        if step % every and now - self._last < self.every_seconds and step != total:
            return
        self._last = now
        done, elapsed = step - self._first_step, now - self._start
        share = f"/{total} ({100 * step / total:.0f}%)" if total else ""
        eta = f", ETA {duration(elapsed / done * (total - step))}" if total and done > 0 else ""
        metrics = metric_text(trainer.callback_metrics, LINE_METRICS)
        self.emit(trainer, f"step {step}{share} | {metrics} | {duration(elapsed)} elapsed{eta}")

    @rank_zero_only
    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking or self._path is None:
            return
        values = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.emit(trainer, f"validation at step {trainer.global_step}: {metric_text(values)}")

    @rank_zero_only
    def on_train_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.emit(trainer, f"done: step {trainer.global_step} after {duration(time.monotonic() - self._start)}")
