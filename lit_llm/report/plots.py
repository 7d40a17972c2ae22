"""The report's plots: loss curves per training stage, gold accuracy stage by stage, and reward against KL (PPO;
DPO's implicit reward margin and gold accuracy against step)."""

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from lit_llm.report.runs import DATA_STAGES, Runs, StageRun, history  # noqa: E402

def _grid(n: int, plt: Any, height: float = 2.6) -> tuple[Any, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_losses(runs: Runs, path: Path) -> bool:
    """train/loss (line) and val/loss (markers) against step, one panel per stage that logged a loss."""
    panels = [(s, history(s.run_id, "train/loss", runs.uri), history(s.run_id, "val/loss", runs.uri))
              for s in runs.stages if s.kind not in DATA_STAGES]
    panels = [p for p in panels if p[1] or p[2]]
    if not panels:
        return False
    fig, axes = _grid(len(panels), plt)
    for ax, (stage, train, val) in zip(axes, panels):
        if train:
            ax.plot(*zip(*train), lw=1, alpha=0.8, label="train/loss")
        if val:
            ax.plot(*zip(*val), "o-", ms=4, label="val/loss")
        ax.set_title(f"{stage.name} ({stage.kind})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_gold(runs: Runs, path: Path) -> bool:
    """Final val/gold_accuracy stage by stage, in pipeline order."""
    bars = [(s.name, s.metric("val/gold_accuracy")) for s in runs.stages]
    bars = [(n, v) for n, v in bars if v is not None]
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(bars) + 1.5), 3.2))
    ax.bar(range(len(bars)), [v for _, v in bars], color="tab:blue")
    for i, (_, v) in enumerate(bars):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(bars)), [n for n, _ in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("val/gold_accuracy", fontsize=8)
    ax.set_title("gold accuracy stage by stage (held-out task-world questions, greedy)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _first(run: StageRun, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if run.metric(k) is not None), None)


def _reward_kl_panel(ax: Any, stage: StageRun, uri: str) -> None:
    kl = _first(stage, ("train/kl", "val/kl"))
    reward = _first(stage, ("train/reward", "val/reward", "val/reward_margin", "train/reward_margin"))
    ax.set_title(f"{stage.name} ({stage.kind})", fontsize=9)
    ax.tick_params(labelsize=7)
    if kl and reward:
        by_step = dict(history(stage.run_id, reward, uri))
        points = [(k, by_step[step], step) for step, k in history(stage.run_id, kl, uri) if step in by_step]
        if points:
            xs, ys, steps = zip(*points)
            sc = ax.scatter(xs, ys, c=steps, s=10, cmap="viridis")
            ax.figure.colorbar(sc, ax=ax).set_label("step", fontsize=7)
        ax.set_xlabel(kl, fontsize=8)
        ax.set_ylabel(reward, fontsize=8)
        return
    # DPO logs no KL to its reference: show what it has, against step, and say so
    for key in ("val/reward_margin", "val/gold_accuracy"):
        points = history(stage.run_id, key, uri)
        if points:
            ax.plot(*zip(*points), "o-", ms=3, label=key)
    ax.set_xlabel("step (no KL logged by this stage)", fontsize=8)
    ax.legend(fontsize=7)


def plot_reward_kl(runs: Runs, path: Path) -> bool:
    """PPO and DPO: reward against KL to the reference (see `_reward_kl_panel`)."""
    stages = [s for s in runs.stages if s.kind in ("ppo", "dpo")]
    if not stages:
        return False
    fig, axes = _grid(len(stages), plt, height=2.8)
    for ax, stage in zip(axes, stages):
        _reward_kl_panel(ax, stage, runs.uri)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
