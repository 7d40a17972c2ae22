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
import sys
from pathlib import Path

from lit_llm.report.expected import check, expected_values
from lit_llm.report.plots import plot_gold, plot_losses, plot_reward_kl
from lit_llm.report.runs import (DATA_METRICS, DATA_STAGES, RESULT_METRICS, ReportError, Runs, StageRun, artifact_text,
                                 fmt_seconds, load_runs, report_client)

PLOTS = ("loss_curves.png", "gold_accuracy.png", "reward_vs_kl.png")
COUNTS = ("num_", "tokens", "documents", "steps")


def fmt(value: float | None, key: str = "") -> str:
    """A metric for a table: counts as integers with separators, others with 3 decimals (3 significant when
    tiny)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if float(value).is_integer() and (abs(value) >= 1000 or any(c in key for c in COUNTS)):
        return f"{int(value):,}"
    return f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"


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


# ---------------------------------------------------------------------------------------------------- writing
def copy_configs(runs: Runs, out: Path) -> None:
    client, _ = report_client(runs.uri)
    for s in runs.stages:
        text = artifact_text(client, s.run_id, "config.yaml")
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
