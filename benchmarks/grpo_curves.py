"""Gold accuracy against rollout samples for RL runs side by side (GRPO variants, PPO), read from MLflow.

    python benchmarks/grpo_curves.py --out reports/grpo_curves.png \
        --run "GRPO=sqlite:////tmp/g/variants.db|grpo-variants|grpo" \
        --run "PPO (judge RM)=sqlite:///mlflow.db|pipeline-tiny|ppo|64"

Each --run is LABEL=TRACKING_URI|EXPERIMENT|RUN_NAME[|SAMPLES_PER_STEP]. A GRPO run logs `train/samples_generated`
(resamples included), read at each validation step; for other runs (PPO) samples = step × SAMPLES_PER_STEP
(PPO logs validation per rollout: the tiny recipe samples 64 per rollout). Step 0 is the starting model's
accuracy when given with --start (the runs' first validation comes after their first batches). The right panel is
the accuracy of the sampled responses themselves (`train/accuracy`, GRPO runs). Prints a markdown table and writes
the plot.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from mlflow import MlflowClient  # noqa: E402

METRIC = "val/gold_accuracy"
SAMPLED = "train/accuracy"  # gold correctness of the rollouts themselves (GRPO), a moving mean of 10 batches


def find_run(uri: str, experiment: str, name: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no experiment {experiment!r} in {uri}")
    runs = client.search_runs([found.experiment_id], f"attributes.run_name = '{name}'",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise SystemExit(f"no run {name!r} in {experiment!r} of {uri}")
    return client, runs[0]


def sampled_accuracy(client: MlflowClient, run_id: str, counted: dict[int, float]) -> list[tuple[float, float]]:
    """(samples, mean rollout accuracy over the last 10 batches) of a GRPO run; [] for runs without it."""
    values = [m.value for m in sorted(client.get_metric_history(run_id, SAMPLED), key=lambda m: m.step)]
    steps = sorted(counted)[:len(values)]
    return [(counted[steps[i]], sum(values[max(0, i - 9):i + 1]) / len(values[max(0, i - 9):i + 1]))
            for i in range(len(values))]


def curve(spec: str) -> tuple[str, list[tuple[float, float]], dict]:
    """(label, [(samples, gold accuracy)], facts) of one --run."""
    label, _, rest = spec.partition("=")
    parts = rest.split("|")
    uri, experiment, name = parts[:3]
    per_step = float(parts[3]) if len(parts) > 3 else None
    client, run = find_run(uri, experiment, name)
    gold = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, METRIC))
    sampled: list[tuple[float, float]] = []
    if per_step is None:
        counted = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/samples_generated")}
        points = [(counted[max(s for s in counted if s <= step)], acc) for step, acc in gold]
        sampled = sampled_accuracy(client, run.info.run_id, counted)
    else:
        points = [(step * per_step, acc) for step, acc in gold]
    seconds = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else float("nan")
    return label, points, {"run": run.info.run_id[:8], "seconds": seconds, "sampled": sampled}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="LABEL=URI|EXPERIMENT|RUN_NAME[|SAMPLES_PER_STEP]")
    p.add_argument("--start", type=float, default=None, help="the starting model's gold accuracy, drawn at 0")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args()
    curves = [curve(spec) for spec in args.run]
    fig, (ax, ax_sampled) = plt.subplots(1, 2, figsize=(12, 4))
    print("| run | MLflow run | samples | val gold accuracy at each validation | last | wall time |")
    print("|---|---|---|---|---|---|")
    for label, points, facts in curves:
        if args.start is not None:
            points = [(0.0, args.start), *points]
        line, = ax.plot([s for s, _ in points], [a for _, a in points], marker="o", markersize=3, label=label)
        if facts["sampled"]:
            ax_sampled.plot(*zip(*facts["sampled"]), color=line.get_color(), label=label)
        values = ", ".join(f"{a:.3f}" for _, a in points)
        print(f"| {label} | `{facts['run']}` | {points[-1][0]:,.0f} | {values} | {points[-1][1]:.3f} "
              f"| {facts['seconds'] / 60:.1f} min |")
    if args.start is not None:
        ax.axhline(args.start, color="grey", linestyle=":", linewidth=1, label="start (SFT)")
    ax.set_xlabel("rollout samples")
    ax.set_ylabel("val gold accuracy (512 questions)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_sampled.set_xlabel("rollout samples")
    ax_sampled.set_ylabel("rollout gold accuracy (T = 1, mean of 10 batches)")
    ax_sampled.legend(fontsize=8)
    ax_sampled.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
