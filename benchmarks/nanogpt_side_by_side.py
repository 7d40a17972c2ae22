"""Side by side with nanoGPT on tiny Shakespeare: training tokens/s (A/B interleaved) and val loss at equal steps.

Both train nanoGPT's CPU "baby GPT" setup (configs/pretrain/shakespeare.yaml: 4 layers, 4 heads, 128 dims, context
64, batch 12, lr 1e-3 → 1e-4 cosine, 100 warm-up steps, β2 0.99, weight decay 0.1, clip 1.0, no dropout, no biases)
on the SAME token ids: our byte tokenizer's train/val streams are written in nanoGPT's format (train.bin, val.bin,
meta.pkl) into its data/ folder, so vocabulary (264), split (last 10% of the text is validation) and tokens match.
Architectures differ as the projects do: ours Llama-style (RMSNorm, RoPE, SwiGLU with d_ff 341 to match the parameter count, tied embeddings),
nanoGPT GPT-2-style (LayerNorm, learned positions, GELU MLP 512, tied embeddings).

nanoGPT is an external checkout run beside ours, never committed:
    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT
    python benchmarks/nanogpt_side_by_side.py --nanogpt /tmp/nanoGPT --data ../shared/data/tinyshakespeare.txt \
        --speed-steps 300 --rounds 3 --loss-steps 2000 --out /tmp/nanogpt_side_by_side.json

Speed: `--rounds` × (nanoGPT run, our run) of `--speed-steps` steps each, alternating, without validation; each
run's tokens/s is batch × context ÷ median step time (nanoGPT: its printed per-iteration time; ours: the wall time
between consecutive ends of training batches; both include fetching the batch, forward, backward and the AdamW
step). Loss: one run each of `--loss-steps` steps with evaluation every `--eval-interval` steps (nanoGPT: its
estimate over `--eval-iters` random val batches; ours: the whole val split).

Other shapes of ours (reports/side_by_side.md's shapes table): `--backbone KEY=VALUE`, repeatable, e.g. `--backbone
n_layer=2` (fewer layers, same width) or `--backbone n_layer=1 --backbone d_model=256 --backbone n_head=8 --backbone
d_ff=640` (one wider layer with the equal-size model's parameters and matmul FLOPs per token).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from mlflow import MlflowClient

from lit_llm.cli import LitLLMCLI
from lit_llm.data.text import TextDataModule
from lit_llm.tracking import cpu_model, git_describe

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "pretrain" / "shakespeare.yaml"
SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)
TOKENS_PER_STEP = SHAPE["block_size"] * SHAPE["batch_size"]
# SwiGLU width at which our parameter count matches nanoGPT's GELU MLP (3·128·341 ≈ 2·128·512): 820,864 against
# its 829,568 (which includes 64×128 learned positions), so both do the same matmul FLOPs per token.
D_FF = 341
EVAL_INTERVAL = 250  # steps between val-loss evaluations, both sides (--eval-interval)


class StepTimes(pl.Callback):
    """Wall time between consecutive ends of training batches (data fetch + forward + backward + step)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None
        self.first: float | None = None  # when the first step ended (compilation included)

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def write_nanogpt_dataset(data: str, nanogpt: Path) -> str:
    """Our byte tokenizer's train/val token streams as nanoGPT's data/<name>/{train,val}.bin + meta.pkl."""
    dm = TextDataModule(source=data, tokenizer="byte", block_size=SHAPE["block_size"], val_fraction=0.1,
                        cache_dir=str(REPO / "data" / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    name = "lit_llm_shakespeare_bytes"
    folder = nanogpt / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(dm.train_tokens, dtype=np.uint16).tofile(folder / "train.bin")
    np.asarray(dm.val_tokens, dtype=np.uint16).tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": dm.tokenizer.vocab_size}, f)
    print(f"nanoGPT dataset {folder}: {len(dm.train_tokens):,} train / {len(dm.val_tokens):,} val tokens, "
          f"vocab {dm.tokenizer.vocab_size}")
    return name


def run_nanogpt(nanogpt: Path, dataset: str, steps: int, eval_interval: int, eval_iters: int) -> dict:
    """One nanoGPT training run (CPU, no compile); per-iteration times and its val-loss estimates."""
    args = [f"--{k}={v}" for k, v in SHAPE.items()] + [
        f"--dataset={dataset}", "--device=cpu", "--compile=False", "--dropout=0.0", "--bias=False",
        f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={eval_interval}",
        f"--eval_iters={eval_iters}", "--log_interval=1", "--out_dir=/tmp/nanogpt_out", "--dtype=float32"]
    proc = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", *args], cwd=nanogpt,
                          capture_output=True, text=True, check=True)
    out = proc.stdout
    times = [float(t) / 1000 for t in re.findall(r"^iter \d+: loss [\d.]+, time ([\d.]+)ms", out, re.M)][1:]
    val = {int(s): float(v) for s, v in re.findall(r"^step (\d+): train loss [\d.]+, val loss ([\d.]+)", out, re.M)}
    params = float(re.search(r"number of parameters: ([\d.]+)M", out).group(1)) * 1e6
    return {"step_times": times, "val_loss": val, "params": params}


def train_ours(data: str, root: Path, steps: int, validate: bool, compile_blocks: bool = False,
               eval_interval: int = EVAL_INTERVAL, backbone: tuple[str, ...] = ()) -> dict:
    """One PretrainLM run of configs/pretrain/shakespeare.yaml in this process; step times and val-loss history
    (with `compile_blocks`, the blocks compiled by lit_llm.callbacks.Compile; `backbone`: KEY=VALUE overrides of
    its shape, after d_ff 341)."""
    args = ["--config", str(CONFIG), f"--data.init_args.source={data}", f"--trainer.max_steps={steps}",
            f"--model.init_args.backbone.d_ff={D_FF}", *(f"--model.init_args.backbone.{kv}" for kv in backbone),
            f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.logger.init_args.experiment_name=nanogpt-side-by-side",
            f"--data.init_args.cache_dir={REPO / 'data' / 'cache'}"]
    if validate:
        args.append(f"--trainer.val_check_interval={eval_interval}")
    else:
        args.append("--trainer.limit_val_batches=0")
    if compile_blocks:
        args.append("--trainer.callbacks+=lit_llm.callbacks.Compile")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    cli = LitLLMCLI(args=args, run=False)
    timer = StepTimes()
    cli.trainer.callbacks.append(timer)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    run_id = cli.trainer.logger.run_id
    history = MlflowClient().get_metric_history(run_id, "val/loss")
    return {"step_times": timer.times[1:], "val_loss": {m.step: m.value for m in history},
            "first_step_s": timer.first - start,
            "params": cli.model.model.num_params(), "mlflow_run_id": run_id}


def run_ours(data: str, root: Path, steps: int, validate: bool, compile_blocks: bool = False,
             eval_interval: int = EVAL_INTERVAL, backbone: tuple[str, ...] = ()) -> dict:
    """`train_ours` in a fresh Python process, as nanoGPT runs, so neither inherits the other's state."""
    worker = [sys.executable, __file__, "--worker", str(root), "--data", data, "--speed-steps", str(steps),
              "--eval-interval", str(eval_interval), *(f"--backbone={kv}" for kv in backbone)]
    worker += ["--validate"] if validate else []
    proc = subprocess.run(worker + (["--compile"] if compile_blocks else []), capture_output=True, text=True,
                          check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["val_loss"] = {int(k): v for k, v in result["val_loss"].items()}
    return result


def model_step_seconds(model: torch.nn.Module, loss_of, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Median seconds of forward + loss + backward + clip + AdamW over the batches (the first 5 are warm-up)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    times = []
    for x, y in batches:
        start = time.perf_counter()
        loss = loss_of(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


def nanogpt_model(nanogpt: Path | str, vocab_size: int) -> torch.nn.Module:
    """nanoGPT's GPT (its model.py, from the checkout) at the side by side's shape: no dropout, no biases."""
    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    return GPT(GPTConfig(block_size=SHAPE["block_size"], vocab_size=vocab_size, n_layer=SHAPE["n_layer"],
                         n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"], dropout=0.0, bias=False))


def model_only_rounds(nanogpt: Path, rounds: int, steps: int = 60, backbone: tuple[str, ...] = (),
                      compile_blocks: bool = False) -> list[dict]:
    """The two models alone in one plain PyTorch loop on identical random batches, alternating: separates the
    models' own speed from the training frameworks around them (ours in the `--backbone` shape, if given; with
    `compile_blocks`, also a copy of ours with each block compiled as `lit_llm.callbacks.Compile` does, its
    compilation in the first round's warm-up steps)."""
    import copy

    import torch.nn.functional as F

    from lit_llm.model import ModelConfig, Transformer

    V, B, T = 264, SHAPE["batch_size"], SHAPE["block_size"]
    nano = nanogpt_model(nanogpt, V)
    shape = {"n_layer": SHAPE["n_layer"], "n_head": SHAPE["n_head"], "d_model": SHAPE["n_embd"], "d_ff": D_FF}
    shape.update({key: int(value) for key, value in (kv.split("=", 1) for kv in backbone)})
    ours = Transformer(ModelConfig(vocab_size=V, max_seq_len=T, **shape))
    compiled = copy.deepcopy(ours) if compile_blocks else None
    for block in compiled.blocks if compiled is not None else ():
        block.compile()  # in place, as the Compile callback does

    def ours_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x).flatten(0, 1), y.flatten())

    rows = []
    for r in range(rounds):
        batches = [(torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))) for _ in range(steps)]
        t_nano = model_step_seconds(nano, lambda m, x, y: m(x, y)[1], batches)
        t_ours = model_step_seconds(ours, ours_loss, batches)
        rows.append({"round": r, "nanogpt_tokens_per_s": TOKENS_PER_STEP / t_nano,
                     "ours_tokens_per_s": TOKENS_PER_STEP / t_ours, "ratio": t_nano / t_ours})
        if compiled is not None:
            t_compiled = model_step_seconds(compiled, ours_loss, batches)
            rows[-1].update(compiled_tokens_per_s=TOKENS_PER_STEP / t_compiled, compiled_ratio=t_nano / t_compiled)
        rows[-1]["load_avg"] = os.getloadavg()[0]
        print(f"model-only round {r}: ratio {rows[-1]['ratio']:.3f}"
              + (f", compiled {rows[-1]['compiled_ratio']:.3f}" if compiled is not None else ""), flush=True)
    return rows


def tokens_per_s(step_times: list[float]) -> float:
    return TOKENS_PER_STEP / statistics.median(step_times)


def speed_rounds(args: argparse.Namespace, dataset: str) -> list[dict]:
    """nanoGPT then ours (then ours compiled, with --compile) per round; tokens/s, ratios and the load."""
    rows = []
    for r in range(args.rounds):
        nano = run_nanogpt(args.nanogpt, dataset, args.speed_steps, eval_interval=10**9, eval_iters=1)
        ours = run_ours(args.data, Path(f"/tmp/nanogpt_sbs/ours-speed-{r}"), args.speed_steps, validate=False,
                        backbone=args.backbone)
        row = {"round": r, "nanogpt_tokens_per_s": tokens_per_s(nano["step_times"]),
               "ours_tokens_per_s": tokens_per_s(ours["step_times"]), "ours_first_step_s": ours["first_step_s"]}
        row["ratio"] = row["ours_tokens_per_s"] / row["nanogpt_tokens_per_s"]
        if args.compile:
            compiled = run_ours(args.data, Path(f"/tmp/nanogpt_sbs/ours-compiled-{r}"), args.speed_steps,
                                validate=False, compile_blocks=True, backbone=args.backbone)
            row["compiled_tokens_per_s"] = tokens_per_s(compiled["step_times"])
            row["compiled_first_step_s"] = compiled["first_step_s"]
            row["compiled_ratio"] = row["compiled_tokens_per_s"] / row["nanogpt_tokens_per_s"]
        row["load_avg"] = os.getloadavg()[0]
        print(f"round {r}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "round"), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (its train.py); required")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--speed-steps", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loss-steps", type=int, default=2000, help="0 skips the loss comparison")
    p.add_argument("--model-only-rounds", type=int, default=0,
                   help="also time the two models alone in one plain PyTorch loop (imports the checkout's model.py; "
                        "ours in the --backbone shape; with --compile, ours with compiled blocks too)")
    p.add_argument("--eval-iters", type=int, default=200, help="nanoGPT's val batches per estimate")
    p.add_argument("--eval-interval", type=int, default=EVAL_INTERVAL,
                   help="steps between val-loss evaluations (both)")
    p.add_argument("--nanogpt-commit", default="", help="the checkout's commit, recorded in the JSON")
    p.add_argument("--out", default="nanogpt_side_by_side.json")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: one of our runs, JSON on stdout
    p.add_argument("--validate", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true",
                   help="also time our run with compiled blocks (lit_llm.callbacks.Compile) in every round; "
                        "nanoGPT runs as its README runs it on CPU (--compile=False)")
    p.add_argument("--backbone", action="append", default=[], metavar="KEY=VALUE",
                   help="override our backbone's shape in every run of ours (n_layer=2: fewer FLOPs per token; "
                        "n_layer=1 d_model=256 n_head=8 d_ff=640: the same parameters and FLOPs in one wider layer); "
                        "repeatable; default the equal-size shape")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    if args.worker:
        print(json.dumps(train_ours(args.data, args.worker, args.speed_steps, args.validate, args.compile,
                                    args.eval_interval, tuple(args.backbone))))
        return
    if args.nanogpt is None:
        p.error("--nanogpt (a nanoGPT checkout) is required")
    result = {"command": " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
              "cpu": cpu_model(), "commit": git_describe(REPO),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "nanogpt_commit": args.nanogpt_commit,
              "compile": args.compile, "backbone": args.backbone,
              "load_avg_start": os.getloadavg()}
    if args.model_only_rounds:
        result["model_only"] = model_only_rounds(args.nanogpt, args.model_only_rounds, backbone=tuple(args.backbone),
                                                  compile_blocks=args.compile)
    dataset = write_nanogpt_dataset(args.data, args.nanogpt)
    result["speed"] = speed_rounds(args, dataset) if args.rounds else []
    if args.loss_steps:
        result["loss"] = {"nanogpt": run_nanogpt(args.nanogpt, dataset, args.loss_steps, args.eval_interval,
                                                 args.eval_iters),
                          "ours": run_ours(args.data, Path("/tmp/nanogpt_sbs/ours-loss"), args.loss_steps, True,
                                           args.compile, args.eval_interval, args.backbone)}
        for name in ("nanogpt", "ours"):
            print(name, "val loss", result["loss"][name]["val_loss"])
    result["load_avg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
