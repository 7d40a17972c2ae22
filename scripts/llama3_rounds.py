"""Iterative Llama-3-style post-training: R rounds of rejection sampling → SFT → DPO, in process.

    python scripts/llama3_rounds.py --config configs/llama3/tiny.yaml [--rounds R]

Per round r (1..R), from the current policy (round 1: `policy` of the config):
    1. `lit-llm rejection-sample` from the policy, scored by the reward model (trained first from
       `reward.config` when `reward.checkpoint` does not exist yet) or by the gold answers (`reward.checkpoint:
       gold`), into <root>/round<r>/samples (prompt seed = `rejection.seed` + r, so each round sees new prompts);
    2. SFT on the kept samples, init from the policy;
    3. DPO on the new pairs, init from the new SFT model (reference = that SFT model);
the next round starts from the DPO checkpoint. The stages run through `lit_llm.cli.main` with their stage configs
plus overrides. MLflow links the runs by `lit_llm.parent_run_id`: rejection sampling and SFT → the policy's run,
DPO → the SFT run; SFT and DPO runs also carry `lit_llm.round` and `lit_llm.rejection_run_id`. stats.json of
each round lands in <root>/rounds.json.

Deliberate simplification: the reward model is trained once, not retrained on each round's new pairs.
"""

import argparse
import json
from pathlib import Path

import yaml

from lit_llm.cli import main as cli_main
from lit_llm.rejection import rejection_sample


def stage_args(stage: dict, root: Path, name: str, experiment: str, tags: dict, extra: list[str]) -> list[str]:
    """`fit` arguments for one stage run: its config, the round's paths and names, then the config's overrides."""
    return ["fit", "--config", stage["config"], f"--trainer.default_root_dir={root}",
            f"--trainer.logger.init_args.experiment_name={experiment}", f"--trainer.logger.init_args.run_name={name}",
            f"--trainer.logger.init_args.tags={json.dumps(tags)}", "--trainer.enable_progress_bar=false",
            *extra, *stage.get("overrides", [])]


def ensure_reward(cfg: dict, experiment: str) -> str:
    """The reward checkpoint (or "gold"), training it from `reward.config` when it does not exist."""
    reward = cfg["reward"]
    path = reward["checkpoint"]
    if path != "gold" and not Path(path).is_file():
        root = Path(path).parents[1]
        cli_main(stage_args(reward, root, "reward", experiment, {}, []))
    return path


def run_round(cfg: dict, r: int, policy: str, reward: str) -> tuple[str, dict]:
    """One round; returns the new policy (DPO last.ckpt) and the rejection statistics."""
    root, experiment = Path(cfg["root"]) / f"round{r}", cfg["experiment_name"]
    rs = dict(cfg["rejection"])
    rs["seed"] = rs.get("seed", 0) + r
    stats = rejection_sample(policy, reward, out=root / "samples", experiment_name=experiment,
                             run_name=f"round{r}-rejection", **rs)
    tags = {"lit_llm.round": str(r), "lit_llm.rejection_run_id": stats["run_id"]}
    sft_root, dpo_root = root / "sft", root / "dpo"
    cli_main(stage_args(cfg["sft"], sft_root, f"round{r}-sft", experiment, tags,
                        [f"--model.init_args.init_from={policy}",
                         f"--data.init_args.source={root / 'samples' / 'sft.jsonl'}"]))
    sft_ckpt = str(sft_root / "checkpoints" / "last.ckpt")
    cli_main(stage_args(cfg["dpo"], dpo_root, f"round{r}-dpo", experiment, tags,
                        [f"--model.init_args.init_from={sft_ckpt}",
                         f"--data.init_args.source={root / 'samples' / 'pairs.jsonl'}"]))
    return str(dpo_root / "checkpoints" / "last.ckpt"), stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="rounds config, e.g. configs/llama3/tiny.yaml")
    parser.add_argument("--rounds", type=int, default=None, help="number of rounds (default: the config's)")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    rounds = args.rounds or cfg.get("rounds", 1)
    reward = ensure_reward(cfg, cfg["experiment_name"])
    policy, history = cfg["policy"], []
    for r in range(1, rounds + 1):
        policy, stats = run_round(cfg, r, policy, reward)
        history.append({"round": r, "policy": policy, **stats})
        Path(cfg["root"], "rounds.json").write_text(json.dumps(history, indent=2))
    print(json.dumps(history, indent=2))


if __name__ == "__main__":
    main()
