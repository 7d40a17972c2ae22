"""Start-up cost of the CLI: `lit-llm --help`, and `lit-llm fit` from the command line to the end of its first step.

    python benchmarks/startup.py --pipeline-root runs/pipeline-tiny --rounds 3 --out /tmp/startup.json

Each measurement is a fresh process (imports, config parsing, MLflow run creation, data setup, model loading, DPO's
reference precompute, the sanity validation: everything a user waits for). The first step's end is recorded by the
`FirstStep` callback below, added on the command line (`--trainer.callbacks+=startup.FirstStep`, with this folder on
PYTHONPATH); the time counts from just before the process starts. SFT and DPO start from the pipeline's SFT
checkpoint, DPO trains on its on-policy pairs. Each fit is timed twice: MLflow writing to a fresh sqlite file (a
folder's first run: MLflow creates its tables and runs its schema migrations) and to a store created before the
rounds (every later run in that folder). With `--baseline`, another commit's checkout is timed in alternation with
this one, case by case, so a start-up change is measured against its parent on the same machine at the same time:

    git worktree add /tmp/base HEAD~1
    python benchmarks/startup.py --pipeline-root runs/pipeline-tiny --baseline /tmp/base --baseline-commit ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning.pytorch as pl

REPO = Path(__file__).resolve().parents[1]


class FirstStep(pl.Callback):
    """Writes the wall-clock time at the end of the first training step to $FIRST_STEP_FILE."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        path = os.environ.get("FIRST_STEP_FILE")
        if path and not os.path.exists(path):
            Path(path).write_text(str(time.time()))


def fit_args(stage: str, root: Path, work: str) -> list[str]:
    """`lit-llm fit` arguments of one tiny recipe, started from the pipeline's outputs, stopping after 2 steps."""
    args = ["fit", "--config", str(REPO / "configs" / stage / "tiny.yaml"), "--trainer.max_steps=2",
            f"--trainer.default_root_dir={work}/run", "--trainer.callbacks+=startup.FirstStep"]
    if stage == "pretrain":
        return args + [f"--data.init_args.source={root / 'prepare'}"]
    args.append(f"--model.init_args.init_from={root / 'sft' / 'checkpoints' / 'last.ckpt'}")
    if stage == "dpo":
        args.append(f"--data.init_args.source={root / 'dpo-pairs' / 'pairs.jsonl'}")
    return args


def timed(args_in: Callable[[str], list[str]], first_step: bool, store: str | None = None,
          source: str | None = None) -> float:
    """Seconds from launching `lit-llm ARGS` (ARGS given the run's fresh work folder) to its exit (--help) or to the
    end of its first training step; MLflow writes to `store` (default: a fresh sqlite file in the work folder);
    `source`: another checkout whose lit_llm runs instead of the installed one."""
    with tempfile.TemporaryDirectory() as work:
        marker = Path(work) / "first_step"
        paths = [source] if source else []
        env = {**os.environ, "FIRST_STEP_FILE": str(marker),
               "MLFLOW_TRACKING_URI": store or f"sqlite:///{work}/mlflow.db",
               "PYTHONPATH": os.pathsep.join([*paths, str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
        start = time.time()
        subprocess.run([sys.executable, "-m", "lit_llm", *args_in(work)], env=env, cwd=work, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return float(marker.read_text()) - start if first_step else time.time() - start


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline-root", type=Path, required=True, help="a tiny pipeline's root (runs/pipeline-tiny)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="startup.json")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a checkout of another commit, timed in alternation with this one (its lit_llm first on "
                        "PYTHONPATH); each row then also has its times and the median of per-round ratios")
    p.add_argument("--baseline-commit", default="", help="the baseline's commit, recorded in the JSON")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    root = args.pipeline_root.resolve()
    existing = tempfile.TemporaryDirectory()
    store = f"sqlite:///{existing.name}/mlflow.db"
    from mlflow import MlflowClient

    from lit_llm.tracking import cpu_model, git_describe  # here: the runs import this file (FirstStep) with a baseline's lit_llm

    MlflowClient(store).search_experiments()  # creates the tables
    cases = {"lit-llm --help": (lambda work: ["--help"], False, None)}
    for stage in ("pretrain", "sft", "dpo"):
        name = f"lit-llm fit {stage} tiny, to the end of step 1"
        cases[f"{name}, new MLflow store"] = (partial(fit_args, stage, root), True, None)
        cases[f"{name}, existing MLflow store"] = (partial(fit_args, stage, root), True, store)
    result = {"command": "python " + " ".join(sys.argv), "cpu": cpu_model(), "commit": git_describe(REPO),
              "load_avg_start": os.getloadavg(),
              "rows": [], "baseline": args.baseline_commit if args.baseline else None}
    sides = [("seconds", None)] + ([("baseline_seconds", str(args.baseline))] if args.baseline else [])
    for name, (cli_args, first_step, tracking) in cases.items():
        row = {"case": name, **{key: [] for key, _ in sides}}
        for r in range(args.rounds):  # with a baseline, the two alternate which goes first
            for key, source in sides[::-1] if r % 2 else sides:
                row[key].append(timed(cli_args, first_step, tracking, source))
        row["median_s"] = statistics.median(row["seconds"])
        if args.baseline:
            row["baseline_median_s"] = statistics.median(row["baseline_seconds"])
            row["speedup"] = statistics.median(b / a for a, b in zip(row["seconds"], row["baseline_seconds"]))
        result["rows"].append(row)
        print(f"{name}: median {row['median_s']:.2f} s ({', '.join(f'{t:.2f}' for t in row['seconds'])})"
              + (f", baseline {row['baseline_median_s']:.2f} s, speed-up {row['speedup']:.2f}x" if args.baseline
                 else ""), flush=True)
    result["load_avg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
