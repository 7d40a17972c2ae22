"""Run nanoGPT's CPU "baby GPT" setup (configs/pretrain/shakespeare.yaml) and write reports/pretrain_shakespeare.md.

    python benchmarks/pretrain_shakespeare.py --data ../shared/data/tinyshakespeare.txt

Every number in the report is read back from the run's MLflow record; nanoGPT's ~1.88 is its published value for
the same setup (README of karpathy/nanoGPT, "I only have a macbook"), quoted, not re-run here.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from lit_llm.commands import main
from lit_llm.tracking import resolve_tracking_uri

NANOGPT_VAL_LOSS = 1.88
REPO = Path(__file__).resolve().parents[1]


def run(data: str, root: str, steps: int | None) -> tuple[str, float]:
    args = ["fit", "--config", str(REPO / "configs/pretrain/shakespeare.yaml"), f"--data.init_args.source={data}",
            f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
    if steps:
        args.append(f"--trainer.max_steps={steps}")
    start = time.perf_counter()
    main(args)
    seconds = time.perf_counter() - start
    run_id = torch.load(Path(root) / "checkpoints/last.ckpt", weights_only=True)["lit_llm"]["mlflow_run_id"]
    return run_id, seconds


def report(run_id: str, seconds: float, command: str) -> str:
    client = MlflowClient(resolve_tracking_uri())
    history = sorted(client.get_metric_history(run_id, "val/loss"), key=lambda m: m.step)
    speed = [m.value for m in client.get_metric_history(run_id, "train/tokens_per_s")]
    rows = "\n".join(f"| {m.step + 1} | {m.value:.4f} |" for m in history)
    final = history[-1].value
    return f"""# Pretraining: nanoGPT's CPU baby GPT on tiny Shakespeare

Command (from the repository root):

    {command}

| | lit_llm (this run) | nanoGPT (published) |
| --- | --- | --- |
| final val loss | **{final:.4f}** | ~{NANOGPT_VAL_LOSS} |
| wall time (whole fit, incl. tokenization and validation) | {seconds:.0f} s | — |
| median training tokens/s | {sorted(speed)[len(speed) // 2]:.0f} | — |

Setup, as nanoGPT's README gives it: 4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 iterations,
lr 1e-3 → 1e-4 cosine with 100 warmup steps, AdamW β2 0.99, weight decay 0.1, gradient clip 1.0, no dropout.
Differences: our block is Llama-style (RMSNorm, RoPE, SwiGLU with d_ff 384, tied embeddings) where nanoGPT's is
GPT-2 style (LayerNorm, learned positions, GELU MLP 512); our vocabulary is the 256 bytes + 8 specials where nanoGPT
uses the text's 65 characters (every Shakespeare character is one byte, so the losses are per character in both);
our val loss is over the whole held-out last 10% of the text, nanoGPT's an estimate over 20 random batches.

Validation loss during the run (MLflow run `{run_id}`):

| step | val loss |
| --- | --- |
{rows}

Machine: {os.cpu_count()}-core {platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} threads.
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
    parser.add_argument("--root", default="runs/pretrain-shakespeare")
    parser.add_argument("--steps", type=int, default=None, help="override max_steps (for a quick look)")
    parser.add_argument("--out", default=str(REPO / "reports/pretrain_shakespeare.md"))
    args = parser.parse_args()
    run_id, seconds = run(args.data, args.root, args.steps)
    command = f"python benchmarks/pretrain_shakespeare.py --data {args.data}"
    Path(args.out).write_text(report(run_id, seconds, command))
    print(Path(args.out).read_text())
