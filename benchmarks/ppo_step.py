"""PPO step benchmark: rollout tokens/s and where a PPO iteration's time goes (generate / score / update).

Runs `PPOModule` under a Lightning Trainer for --rollouts iterations on task-world prompts (no logger, no
validation) and reads the module's own per-rollout timings (`train/time_generate_s`, `train/time_score_s`,
`train/time_update_s`, `train/rollout_tokens_per_s`). The first rollout is a warm-up and is left out; the table
shows medians.

    generate  sampling the responses with the KV cache
    score     one forward pass each of policy+value, reference and reward model, then rewards and GAE
    update    ppo_epochs x mini-batches of forward + backward + AdamW

Usage (after the tiny SFT and reward runs):
    python benchmarks/ppo_step.py --policy runs/sft-tiny/checkpoints/last.ckpt \
        --reward runs/reward-tiny/checkpoints/last.ckpt --rollouts 11 --out /tmp/ppo_step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import lightning.pytorch as pl
import torch

from lit_llm.data.prompts import PromptDataModule
from lit_llm.rollout import RolloutConfig
from lit_llm.stages.ppo import PPOModule
from lit_llm.stages.ppo_parts import PPOUpdate

KEYS = ("time_generate_s", "time_score_s", "time_update_s", "rollout_tokens_per_s", "response_length")


class TimingRecorder(pl.Callback):
    """Collects the module's per-rollout timing metrics."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        self.rows.append({k: float(metrics[f"train/{k}"]) for k in KEYS})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="policy checkpoint (SFT)")
    p.add_argument("--reward", default="gold", help="reward checkpoint, or gold")
    p.add_argument("--rollouts", type=int, default=11, help="PPO iterations (the first is a warm-up)")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per rollout")
    p.add_argument("--mini-batch-size", type=int, default=16)
    p.add_argument("--ppo-epochs", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--value-model", default="separate", choices=["separate", "shared"])
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    return p.parse_args()


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    pl.seed_everything(0)
    module = PPOModule(args.policy, args.reward, value_model=args.value_model,
                       rollout=RolloutConfig(max_new_tokens=args.max_new_tokens),
                       update=PPOUpdate(ppo_epochs=args.ppo_epochs, mini_batch_size=args.mini_batch_size),
                       rollout_table_every=0)
    data = PromptDataModule(num_prompts=args.batch_size * args.rollouts, num_val_prompts=1,
                            batch_size=args.batch_size, tokenizer_from=args.policy)
    recorder = TimingRecorder()
    updates = args.ppo_epochs * -(-args.batch_size // args.mini_batch_size)
    trainer = pl.Trainer(accelerator="auto", devices=1, max_steps=updates * args.rollouts, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[recorder])
    trainer.fit(module, data)
    return recorder.rows


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args)[1:]  # leave out the warm-up rollout
    median = {k: statistics.median(r[k] for r in rows) for k in KEYS}
    step = median["time_generate_s"] + median["time_score_s"] + median["time_update_s"]
    print(f"{len(rows)} rollouts of {args.batch_size} prompts ({args.ppo_epochs} epochs x "
          f"{-(-args.batch_size // args.mini_batch_size)} mini-batches), median per rollout:")
    print("| part | seconds | share |\n|---|---:|---:|")
    for part in ("generate", "score", "update"):
        t = median[f"time_{part}_s"]
        print(f"| {part} | {t:.3f} | {t / step:.0%} |")
    print(f"| total | {step:.3f} | 100% |")
    print(f"rollout tokens/s (generation only): {median['rollout_tokens_per_s']:.0f}; "
          f"mean response length {median['response_length']:.1f}")
    if args.out:
        result = {"args": {k: str(v) for k, v in vars(args).items()}, "median": median, "rows": rows,
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                  "machine": platform.processor() or platform.machine(),
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
