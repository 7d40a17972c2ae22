"""`lit-llm report`: REPORT.md, plots and the reported values of a pipeline, derived from its MLflow runs.

    lit-llm report --experiment pipeline-tiny --out reports/tiny/
    lit-llm report --check reports/tiny/expected.json

The runs: the experiment's newest pipeline run (tag lit_llm.stage=pipeline; `--pipeline_run` picks another) and
the stage runs its stage table (`stages.json`) lists, reused ones included; in an experiment without a pipeline
run, every finished run (the newest of each run name). `--out` receives:

    REPORT.md            final metrics per stage, the data stages, plots, the runs with lineage, seeds and data
                         fingerprints, the commands, package versions, git SHA, hardware and wall times
    loss_curves.png      train/val loss against step, one panel per training stage
    gold_accuracy.png    final val/gold_accuracy stage by stage
    reward_vs_kl.png     PPO: reward against KL to the reference; DPO: its logged reward against KL when it logs
                         one, else its implicit reward margin and gold accuracy against step
    configs/<stage>.yaml each run's resolved config (its MLflow artifact)
    expected.json        the reported values and their tolerances (tolerances already in the file are kept)

`--check expected.json` reads the newest pipeline run of the file's experiment (or `--experiment`) and compares
each reported value with the fresh one; it exits 1 with a table of the differences when one is off by more than
its tolerance or missing. Nothing here is typed by hand: change a result by re-running, then re-reporting.
"""

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# final-metric columns of the results table, in order; a column is shown when some stage logged it
RESULT_METRICS = ("val/loss", "val/ppl", "val/gold_accuracy", "val/pair_accuracy", "val/reward_margin",
                  "val/reward_accuracy", "train/reward", "train/kl", "val/reward")
# what data stages (prepare, rejection sampling) produced
DATA_METRICS = ("output.train_tokens", "output.val_tokens", "output.train_documents", "rejection/num_pairs",
                "rejection/num_sft", "rejection/usable_pair_share", "rejection/sample_gold_accuracy",
                "rejection/kept_gold_accuracy")
DATA_STAGES = ("prepare", "rejection_sampling")
PLOTS = ("loss_curves.png", "gold_accuracy.png", "reward_vs_kl.png")
QUIET_DOWNLOADS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class ReportError(Exception):
    """Missing experiment, run or file; the message says which."""


@dataclass
class StageRun:
    """One stage of a pipeline with its MLflow run.

    Args:
        name: The pipeline's stage name (else the run name).
        run: The MLflow run.
        command: The `lit-llm` command that made it, when the pipeline recorded it.
        seconds: Wall time of the stage (pipeline record, else the run's start to end).
        status: "ran" or "reused" in the pipeline invocation that recorded it; "" outside a pipeline.
        load: The machine's 1-minute load average when the stage started (pipeline record), for its wall time.
    """

    name: str
    run: Any
    command: str | None = None
    seconds: float | None = None
    status: str = ""
    load: float | None = None

    @property
    def wall_time(self) -> str:
        load = f" (load {self.load:.1f})" if self.load is not None else ""
        return fmt_seconds(self.seconds) + load

    @property
    def kind(self) -> str:
        return self.run.data.tags.get("lit_llm.stage", "?")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def metric(self, key: str) -> float | None:
        return self.run.data.metrics.get(key)


@dataclass
class Runs:
    """The runs a report is made of: the pipeline run (None for runs made by hand) and its stages in order."""

    experiment: str
    pipeline: Any
    stages: list[StageRun]
    uri: str
    recipe: str | None = None  # the recipe that reproduces them: the pipeline's, or named by the caller

    def tag(self, key: str) -> str | None:
        """A tag of the pipeline run, else the stages' common value (None when absent or when they differ)."""
        if self.pipeline is not None and key in self.pipeline.data.tags:
            return self.pipeline.data.tags[key]
        values = {s.run.data.tags.get(key) for s in self.stages}
        return values.pop() if len(values) == 1 else None


# ------------------------------------------------------------------------------------------- reading MLflow
def _client(tracking_uri: str | None):
    from mlflow import MlflowClient

    from lit_llm.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(uri), uri


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = ", ".join(sorted(e.name for e in client.search_experiments()))
        raise ReportError(f"no MLflow experiment '{name}' in this store (experiments: {known or 'none'}); "
                          "set MLFLOW_TRACKING_URI or --tracking_uri to the store the runs logged to")
    return experiment.experiment_id


def _artifact_text(client: Any, run_id: str, path: str) -> str | None:
    """An artifact of a run as text, None when the run has no such artifact."""
    quiet = os.environ.get(QUIET_DOWNLOADS)
    os.environ[QUIET_DOWNLOADS] = "false"  # no progress bar per small file
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text()
    except Exception:  # MLflow raises different types per store for a missing artifact
        return None
    finally:
        if quiet is None:
            os.environ.pop(QUIET_DOWNLOADS, None)
        else:
            os.environ[QUIET_DOWNLOADS] = quiet


def _pipeline_stages(client: Any, pipeline: Any) -> list[StageRun]:
    table = _artifact_text(client, pipeline.info.run_id, "stages.json")
    if table is None:
        raise ReportError(f"pipeline run {pipeline.info.run_id} has no stages.json (did it run any stage?)")
    stages = []
    for row in json.loads(table):
        if not row.get("run_id"):
            continue
        stages.append(StageRun(row["name"], client.get_run(row["run_id"]), row.get("command"), row.get("seconds"),
                               row.get("status", ""), row.get("load_avg_1m")))
    return stages


def _runs_by_hand(client: Any, experiment_id: str) -> list[StageRun]:
    """Finished runs of an experiment without a pipeline run: the newest per run name, oldest first."""
    runs = client.search_runs([experiment_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    newest: dict[str, Any] = {}
    for run in runs:
        newest.setdefault(run.info.run_name, run)
    ordered = sorted(newest.values(), key=lambda r: r.info.start_time)
    return [StageRun(r.info.run_name, r, seconds=_run_seconds(r)) for r in ordered]


def _run_seconds(run: Any) -> float | None:
    if run.info.end_time and run.info.start_time:
        return (run.info.end_time - run.info.start_time) / 1000
    return None


def load_runs(experiment: str, pipeline_run: str | None = None, tracking_uri: str | None = None) -> Runs:
    """The stage runs of the newest (or the given) pipeline run of an experiment, or its runs made by hand."""
    client, uri = _client(tracking_uri)
    experiment_id = _experiment_id(client, experiment)
    if pipeline_run:
        pipeline = client.get_run(pipeline_run)
    else:
        found = client.search_runs([experiment_id], filter_string="tags.`lit_llm.stage` = 'pipeline'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        pipeline = found[0] if found else None
    stages = _pipeline_stages(client, pipeline) if pipeline else _runs_by_hand(client, experiment_id)
    if not stages:
        raise ReportError(f"experiment '{experiment}' has no finished stage runs")
    recipe = pipeline.data.tags.get("lit_llm.recipe") if pipeline else None
    return Runs(experiment, pipeline, stages, uri, recipe)


def history(run_id: str, key: str, uri: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, by step."""
    client, _ = _client(uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---------------------------------------------------------------------------------------------------- tables
COUNTS = ("num_", "tokens", "documents", "steps")


def fmt(value: float | None, key: str = "") -> str:
    """A metric for a table: counts as integers with separators, others with 3 decimals (3 significant when
    tiny)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if float(value).is_integer() and (abs(value) >= 1000 or any(c in key for c in COUNTS)):
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _columns(stages: list[StageRun], keys: tuple[str, ...]) -> list[str]:
    return [k for k in keys if any(s.metric(k) is not None for s in stages)]


def results_table(stages: list[StageRun]) -> str:
    """Final metrics of the training stages, one row per stage in pipeline order."""
    training = [s for s in stages if s.kind not in DATA_STAGES]
    if not training:
        return "No training stages."
    keys = _columns(training, RESULT_METRICS)
    rows = [[s.name, s.kind, s.run.data.params.get("trainer.max_steps", "–"), *(fmt(s.metric(k), k) for k in keys),
             s.wall_time] for s in training]
    return _table(["stage", "kind", "steps", *keys, "wall time"], rows)


def data_table(stages: list[StageRun]) -> str | None:
    """What the data stages produced (tokens, documents; pairs, SFT records and their gold accuracy)."""
    data = [s for s in stages if s.kind in DATA_STAGES]
    if not data:
        return None
    keys = _columns(data, DATA_METRICS)
    rows = [[s.name, s.kind, *(fmt(s.metric(k), k) for k in keys), s.wall_time] for s in data]
    return _table(["stage", "kind", *keys, "wall time"], rows)


def _short(run_id: str | None, names: dict[str, str]) -> str:
    if not run_id:
        return "–"
    return names.get(run_id, run_id[:8])


def runs_table(stages: list[StageRun]) -> str:
    """Each run with its lineage (the stage its weights and data came from), seed and data fingerprint."""
    names = {s.run_id: s.name for s in stages}
    rows = []
    for s in stages:
        tags = s.run.data.tags
        data = ", ".join(_short(r, names) for r in tags.get("lit_llm.data_run_id", "").split(",") if r) or "–"
        seed = tags.get("lit_llm.seed") or s.run.data.params.get("seed", "–")
        config = f"[config](configs/{s.name}.yaml)" if s.kind != "rejection_sampling" else "–"
        rows.append([s.name, f"`{s.run_id[:8]}`", _short(tags.get("lit_llm.parent_run_id"), names), data, seed,
                     tags.get("lit_llm.data_fingerprint", "–"), s.status or s.run.info.status.lower(), config])
    return _table(["stage", "run", "weights from", "data from", "seed", "data fingerprint", "status", "config"],
                  rows)


def environment(runs: Runs) -> str:
    """Git SHA, package versions and hardware, as the runs recorded them (differences are listed, not hidden)."""
    tags = [s.run.data.tags for s in runs.stages] + ([runs.pipeline.data.tags] if runs.pipeline else [])
    shas = sorted({t["lit_llm.git_sha"] for t in tags if "lit_llm.git_sha" in t})
    lines = [f"- git SHA: {', '.join(f'`{s}`' for s in shas) or 'not recorded'}"
             + (" (the runs differ: uncommitted or later code for some stages)" if len(shas) > 1 else "")]
    versions: dict[str, set[str]] = {}
    for t in tags:
        for key, value in t.items():
            if key.startswith("lit_llm.version."):
                versions.setdefault(key.removeprefix("lit_llm.version."), set()).add(value)
    if versions:
        lines.append("- packages: " + ", ".join(f"{k} {' / '.join(sorted(v))}" for k, v in sorted(versions.items())))
    hw = {k.removeprefix("lit_llm.hardware."): v for k, v in (runs.pipeline.data.tags if runs.pipeline else {}).items()
          if k.startswith("lit_llm.hardware.")}
    if hw:
        gpus = f", GPUs: {hw['gpus']}" if "gpus" in hw else ", no GPU"
        lines.append(f"- hardware: {hw.get('cpu', '?')}, {hw.get('cpu_cores', '?')} cores "
                     f"({hw.get('torch_threads', '?')} torch threads), {hw.get('memory_gb', '?')} GB{gpus}; "
                     f"{hw.get('os', '')}; 1-minute load average when the last invocation started: "
                     f"{hw.get('load_avg_1m', '?')} (per stage: the wall time column)")
    else:
        lines.append("- hardware: not recorded (runs made outside `lit-llm pipeline`)")
    ran = [s.seconds for s in runs.stages if s.seconds is not None]
    lines.append(f"- wall time: {fmt_seconds(sum(ran))} over {len(ran)} stages (each stage's own time, summed)")
    lines.append(f"- MLflow: experiment `{runs.experiment}`"
                 + (f", pipeline run `{runs.pipeline.info.run_id}`" if runs.pipeline else ""))
    return "\n".join(lines)


def commands(runs: Runs) -> str:
    recorded = [s for s in runs.stages if s.command]
    if not recorded:
        return "Not recorded (runs made outside `lit-llm pipeline`); each run's resolved config is linked above."
    return "```bash\n" + "\n".join(f"# {s.name}\n{s.command}" for s in recorded) + "\n```"


# ----------------------------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, plt: Any, height: float = 2.6):
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
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
    fig, axes = _grid(len(stages), plt, height=2.8)
    for ax, stage in zip(axes, stages):
        _reward_kl_panel(ax, stage, runs.uri)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------- expected values
def default_tolerance(key: str, value: float) -> float:
    """How far a re-run may land from a reported value (a judgment, kept once written to expected.json).

    Same seed, same CPU setup: identical. Elsewhere (other BLAS, GPU kernels) the tiny models' greedy answers
    flip: accuracies ±0.05 (±26 of 512 questions), prepared-data counts exact, sample counts ±10%, the rest ±5%.
    """
    if "accuracy" in key or "share" in key:
        return 0.05
    if key.startswith("output."):
        return 0.0
    if key.startswith("rejection/num_"):
        return round(0.1 * abs(value), 1)
    return round(max(0.05 * abs(value), 0.01), 4)


def expected_values(runs: Runs, old: dict | None) -> dict:
    """The reported values of every stage (results and data metrics) with tolerances, old tolerances kept."""
    old_stages = (old or {}).get("stages", {})
    stages = {}
    for s in runs.stages:
        values = {}
        for key in RESULT_METRICS + DATA_METRICS:
            value = s.metric(key)
            if value is None:
                continue
            tol = old_stages.get(s.name, {}).get(key, {}).get("tolerance")
            values[key] = {"value": round(value, 4),
                           "tolerance": tol if tol is not None else default_tolerance(key, value)}
        if values:
            stages[s.name] = values
    return {"experiment": runs.experiment, "recipe": runs.recipe,
            "reported_from": {"pipeline_run": runs.pipeline.info.run_id if runs.pipeline else None,
                              "runs": {s.name: s.run_id for s in runs.stages},
                              "git_sha": runs.tag("lit_llm.git_sha"), "cpu": runs.tag("lit_llm.hardware.cpu")},
            "note": "value ± tolerance per stage and metric; check with `lit-llm report --check <this file>`",
            "stages": stages}


def compare(expected: dict, runs: Runs) -> tuple[bool, list[list[str]]]:
    """Rows (stage, metric, expected ± tol, fresh, diff, verdict) and whether all reproduce."""
    by_name = {s.name: s for s in runs.stages}
    rows, ok = [], True
    for stage, metrics in expected.get("stages", {}).items():
        for key, spec in metrics.items():
            want, tol = float(spec["value"]), float(spec.get("tolerance", 0.0))
            fresh = by_name[stage].metric(key) if stage in by_name else None
            if fresh is None:
                ok = False
                why = "no such stage run" if stage not in by_name else "metric not logged"
                rows.append([stage, key, f"{want:g} ± {tol:g}", "missing", "", f"FAIL ({why})"])
                continue
            diff = fresh - want
            good = abs(diff) <= tol + 1e-9
            ok &= good
            rows.append([stage, key, f"{want:g} ± {tol:g}", f"{fresh:.4g}", f"{diff:+.4g}", "ok" if good else "FAIL"])
    return ok, rows


def check(expected_path: str | Path, experiment: str | None = None, pipeline_run: str | None = None,
          tracking_uri: str | None = None) -> tuple[bool, str]:
    """Compare a fresh run with the reported values; returns (all reproduce, a readable table)."""
    path = Path(expected_path)
    if not path.is_file():
        raise ReportError(f"expected values not found: {path}")
    expected = json.loads(path.read_text())
    name = experiment or expected.get("experiment")
    if not name:
        raise ReportError(f"{path} names no experiment; pass --experiment")
    runs = load_runs(name, pipeline_run, tracking_uri)
    ok, rows = compare(expected, runs)
    source = f"pipeline run {runs.pipeline.info.run_id[:8]}" if runs.pipeline else "runs made outside a pipeline"
    header = ["stage", "metric", "expected", "fresh", "diff", ""]
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(6)]
    lines = [f"check {path} against experiment '{name}' ({source}):"]
    for row in [header, *rows]:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    failed = sum(r[-1] != "ok" for r in rows)
    lines.append(f"all {len(rows)} values reproduce" if ok else f"{failed} of {len(rows)} values do NOT reproduce")
    if expected.get("reproduced") is False:
        lines.append(f"(expected ranges, not yet reproduced here: {expected.get('note', '')})")
    reported = (expected.get("reported_from") or {}).get("runs") or {}
    if reported and all(reported.get(s.name) == s.run_id for s in runs.stages if s.name in reported):
        lines.append("(these are the reported runs themselves: run the recipe for a fresh run to compare)")
    return ok, "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- writing
def copy_configs(runs: Runs, out: Path) -> None:
    client, _ = _client(runs.uri)
    for s in runs.stages:
        text = _artifact_text(client, s.run_id, "config.yaml")
        if text is not None:
            (out / "configs").mkdir(parents=True, exist_ok=True)
            (out / "configs" / f"{s.name}.yaml").write_text(text)


def render(runs: Runs, plots: list[str], command: str, out: Path) -> str:
    """REPORT.md's text."""
    reproduce = (f"    lit-llm pipeline --config {runs.recipe}\n    lit-llm report --check {out}/expected.json"
                 if runs.recipe else "    (no recipe recorded: see the commands and configs below)")
    if runs.recipe and not runs.pipeline:
        reproduce += ("\n\nThese runs were made outside `lit-llm pipeline`, with the same configs as the recipe; "
                      "--check compares the recipe's next run with them.")
    data = data_table(runs.stages)
    figures = {"loss_curves.png": "Loss curves", "gold_accuracy.png": "Gold accuracy stage by stage",
               "reward_vs_kl.png": "Reward against KL (PPO, DPO)"}
    parts = [
        f"# Report: {runs.experiment}",
        f"Generated by `{command}` on {datetime.date.today().isoformat()} from the MLflow store `{runs.uri}`. "
        "Every number below is read from the runs; regenerate rather than edit.",
        "## Reproduce", reproduce,
        "## Results (final value of each metric)", results_table(runs.stages),
        *(["## Data stages", data] if data else []),
        *[f"## {figures[p]}\n\n![{figures[p]}]({p})" for p in plots],
        "## Runs", runs_table(runs.stages),
        "## Commands", commands(runs),
        "## Environment", environment(runs),
    ]
    return "\n\n".join(parts) + "\n"


def write_report(experiment: str, out: str | Path, pipeline_run: str | None = None,
                 tracking_uri: str | None = None, command: str | None = None, recipe: str | None = None) -> Path:
    """Write REPORT.md, the plots, the configs and expected.json into `out`; returns REPORT.md's path.

    `recipe` names the recipe that reproduces runs made outside a pipeline (a pipeline records its own).
    """
    runs = load_runs(experiment, pipeline_run, tracking_uri)
    runs.recipe = runs.recipe or recipe
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawers = {"loss_curves.png": plot_losses, "gold_accuracy.png": plot_gold, "reward_vs_kl.png": plot_reward_kl}
    plots = [name for name in PLOTS if drawers[name](runs, out / name)]
    copy_configs(runs, out)
    command = command or f"lit-llm report --experiment {experiment} --out {out}"
    (out / "REPORT.md").write_text(render(runs, plots, command, out))
    expected_file = out / "expected.json"
    old = json.loads(expected_file.read_text()) if expected_file.is_file() else None
    expected_file.write_text(json.dumps(expected_values(runs, old), indent=2) + "\n")
    return out / "REPORT.md"


def main(argv: list[str]) -> None:
    """Write a report from MLflow runs, or check a fresh run against reported values."""
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm report", description=main.__doc__)
    parser.add_argument("--experiment", default=None, help="MLflow experiment (for --check: default the file's)")
    parser.add_argument("--out", default=None, help="folder for REPORT.md, plots, configs/ and expected.json")
    parser.add_argument("--check", default=None, metavar="EXPECTED_JSON",
                        help="compare the experiment's newest pipeline run with these reported values; exit 1 if off")
    parser.add_argument("--pipeline_run", default=None, help="a pipeline run id (default: the newest)")
    parser.add_argument("--tracking_uri", default=None, help="MLflow store (default MLFLOW_TRACKING_URI or "
                                                             "sqlite:///mlflow.db)")
    parser.add_argument("--recipe", default=None, help="the recipe that reproduces runs made outside a pipeline")
    args = parser.parse_args(argv)
    try:
        if args.check:
            ok, text = check(args.check, args.experiment, args.pipeline_run, args.tracking_uri)
            print(text)
            if not ok:
                sys.exit(1)
            return
        if not (args.experiment and args.out):
            parser.error("give --experiment and --out to write a report, or --check EXPECTED_JSON")
        command = f"lit-llm report --experiment {args.experiment} --out {args.out}" + (
            f" --recipe {args.recipe}" if args.recipe else "")
        path = write_report(args.experiment, args.out, args.pipeline_run, args.tracking_uri, command, args.recipe)
        print(f"wrote {path}")
    except ReportError as err:
        sys.exit(f"lit-llm report: {err}")
