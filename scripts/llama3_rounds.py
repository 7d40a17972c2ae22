"""Llama-3-style post-training rounds from a rounds config, run by `lit-llm pipeline` (a thin wrapper).

    python scripts/llama3_rounds.py --config configs/llama3/tiny.yaml [--rounds R] [--dry_run]

The config (configs/llama3/*.yaml: experiment_name, root, rounds, policy, reward {checkpoint, config}, rejection,
sft, dpo) becomes a pipeline recipe with one `rounds` stage (see `lit_llm.pipeline.expand_rounds`): per round r,
rejection sampling from the policy (prompt seed = rejection.seed + r) → SFT on the kept samples → DPO on the new
pairs, into <root>/round<r>/{samples,sft,dpo}, the next round starting from the DPO checkpoint. When
`reward.checkpoint` is not "gold" and does not exist, a reward stage trains it first from `reward.config`.
Being a pipeline, it resumes where it stopped and nests the runs under a pipeline run in MLflow. Each round's
rejection statistics land in <root>/rounds.json.

The same rounds inside a larger recipe: a `kind: rounds` stage, as in configs/pipeline/tiny.yaml.
"""

import argparse
import json
from pathlib import Path

import yaml

from lit_llm.pipeline.recipe import PipelineError, recipe_from_dict
from lit_llm.pipeline.run import run_pipeline


def recipe(cfg: dict, rounds: int) -> dict:
    """The pipeline recipe of a rounds config."""
    checkpoint = cfg["reward"]["checkpoint"]
    stages, reward = [], checkpoint
    if checkpoint != "gold" and not Path(checkpoint).is_file():
        stages.append({"name": "reward", "config": cfg["reward"]["config"], "dir": str(Path(checkpoint).parents[1])})
        reward = "reward"
    stages.append({"name": "llama3", "kind": "rounds", "dir": cfg["root"], "rounds": rounds, "policy": cfg["policy"],
                   "reward": reward, "rejection": cfg.get("rejection") or {}, "sft": cfg["sft"], "dpo": cfg["dpo"]})
    return {"name": Path(cfg["root"]).name, "experiment_name": cfg["experiment_name"], "root": cfg["root"],
            "overrides": ["--trainer.enable_progress_bar=false"], "stages": stages}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="rounds config, e.g. configs/llama3/tiny.yaml")
    parser.add_argument("--rounds", type=int, default=None, help="number of rounds (default: the config's)")
    parser.add_argument("--dry_run", action="store_true", help="print the stages and their commands only")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    rounds = args.rounds or cfg.get("rounds", 1)
    try:
        rows = run_pipeline(recipe_from_dict(recipe(cfg, rounds), args.config), dry_run=args.dry_run, report_at_end=False)
    except PipelineError as err:
        raise SystemExit(f"llama3_rounds: {err}") from err
    if args.dry_run:
        return
    history = [{"round": r, "policy": str(Path(cfg["root"], f"round{r}", "dpo", "checkpoints", "last.ckpt")),
                **json.loads(Path(cfg["root"], f"round{r}", "samples", "stats.json").read_text())}
               for r in range(1, rounds + 1)]
    Path(cfg["root"], "rounds.json").write_text(json.dumps(history, indent=2))
    print(json.dumps(history, indent=2))
    print(f"{len(rows)} stages; MLflow experiment {cfg['experiment_name']}")


if __name__ == "__main__":
    main()
