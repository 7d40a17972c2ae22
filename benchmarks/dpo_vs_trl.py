"""Side by side with TRL's DPOTrainer: DPO training pairs/s (alternating fresh processes) on identical tokens.

Setup (this env): a seeded random Llama backbone of the tiny recipe's shape (`lit_llm.bench.settings.PRESETS["tiny"]`:
4 layers, 4 heads, 2 KV heads, d_model 128, a 512-token BPE trained on the task world's pretraining corpus) exported
with `lit_llm.hf.export_hf` (what `lit-llm export` writes) to <work>/model, and `--pairs` task-world preference pairs
(`lit_llm.world.preference_pairs`) in <work>/pairs.jsonl, which both sides read.

Both sides: batch 16 pairs, max length 128, β 0.1, sigmoid loss, float32, constant LR (no warm-up, no decay),
AdamW(lr 5e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on matrices only: HF's decay groups exclude
norms and biases, which are our vectors), gradient clipping at `--clip`, no validation, no shuffling, a reference
forward every step (or, with `--precompute`, precomputed reference log-probs, whose time is measured too).
  ours: the real stage, `lit_llm.DPOModule` through `LitLLMCLI(args=[...], run=False)` + `trainer.fit`, init_from
      the exported folder, MLflow to a sqlite db under <work>, gold evaluation off (`--gold.examples=0`).
  TRL:  `DPOTrainer` on the same folder, run by `--trl-python` (its own venv, never our dependency):
      python -m venv /tmp/trl_env && /tmp/trl_env/bin/pip install torch==2.13.0 trl transformers datasets accelerate
Tokens: our data module renders "<|begin_of_text|><|user|>\\n{prompt}<|end|>\\n<|assistant|>\\n" + "{response}<|end|>"
(the folder's default chat template; the response tokens are the answer and its <|end|>). TRL is given the
template's rendered prompt as plain text (bos comes from the tokenizer) and the plain response, with its tokenizer's
eos_token set to <|end|>, so TRL's add-eos step closes each response as our template does. The first batch of
both sides is compared token by token (ids and response positions), and a digest of all pairs.

Each side runs in a fresh subprocess per round, alternating TRL, ours, TRL, ours, ...; each reports per-step losses
and wall times (between consecutive step ends: batch fetch, both forwards, backward, clipping, AdamW); the first
5 steps are warm-up; pairs/s = 16 / median step time. Checked (the JSON is written, then a failure exits non-zero):
same tokens, first-step loss = ln 2 on both sides, loss trajectories within `--loss-tol` (3e-5) at every step. Why
3e-5: the step-1 gradients of the two sides agree to ~2e-6 relative (float32 summation order: TRL's tiled LM head,
HF's kernels), which training amplifies to ~2e-6 in the loss by step 40 and ~1e-5 by step 60; the subtlest
mismatch tried, TRL without weight decay, differs by 9e-5 by step 40, a 1% higher TRL learning rate by 4e-3.

    python benchmarks/dpo_vs_trl.py --rounds 3 --steps 60 --out /tmp/dpo_vs_trl.json
    python benchmarks/dpo_vs_trl.py --rounds 3 --steps 60 --precompute --out /tmp/dpo_vs_trl_precompute.json
    python benchmarks/dpo_vs_trl.py --profile --steps 40   # one profiled run of ours: cProfile + torch.profiler
PYTHONPATH=<a checkout's root> runs our side on that checkout's lit_llm (the JSON records the source's hash).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:  # our env only: the TRL worker runs this file with TRL's python, where lit_llm is not installed
    from lit_llm.data.preference import PreferenceDataModule
    from lit_llm.data.sampling import train_loader
except ImportError:
    PreferenceDataModule = object

REPO = Path(__file__).resolve().parents[1]
BATCH, MAX_LENGTH, BETA, WARMUP_STEPS, SEED = 16, 128, 0.1, 5, 0
LR, BETAS, EPS, WEIGHT_DECAY = 5e-4, (0.9, 0.95), 1e-8, 0.1
END_OF_TURN = "<|end|>"
RESULT = "RESULT "


class SequentialPreferenceData(PreferenceDataModule):
    """PreferenceDataModule whose training loader keeps file order: the module always shuffles (no option for it)."""

    def train_dataloader(self):  # noqa: ANN201 (a DataLoader; torch is not imported at module level)
        return train_loader(self, self.datasets["train"], self.batch_size, self.seed, shuffle=False,
                            collate_fn=self.collate_fn(), num_workers=self.num_workers)


# ------------------------------------------------------------------------------------------------ setup
def setup(work: Path, num_pairs: int) -> None:
    """Export the seeded tiny model + tokenizer to <work>/model and write the train (and a 1-pair val) JSONL."""
    import torch

    from lit_llm.bench.settings import PRESETS
    from lit_llm.hf import export_hf
    from lit_llm.model import ModelConfig, Transformer
    from lit_llm.tokenizer import Tokenizer
    from lit_llm.world import preference_pairs, pretrain_corpus, write_jsonl

    tokenizer = Tokenizer.train(pretrain_corpus(3000, seed=SEED).docs, vocab_size=PRESETS["tiny"]["vocab_size"])
    torch.manual_seed(SEED)
    model = Transformer(ModelConfig(**{**PRESETS["tiny"], "vocab_size": tokenizer.vocab_size}))
    export_hf(model, tokenizer, work / "model")
    write_jsonl(preference_pairs(num_pairs, "train", SEED), work / "pairs.jsonl")
    # our data module needs a val source (else 5% of the pairs are held out): 1 pair, only scored in our precompute
    write_jsonl(preference_pairs(1, "val", SEED), work / "val.jsonl")
    print(f"setup: {model.num_params():,} parameters, vocab {tokenizer.vocab_size}, {num_pairs} pairs in {work}")


def digest(pairs: list[list[list[list[int]]]]) -> str:
    """SHA-256 of [[chosen ids, chosen response positions], [rejected ...]] per pair, in training order."""
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


# -------------------------------------------------------------------------------------------- our worker
def run_ours(work: Path, out: Path, steps: int, clip: float, precompute: bool, profile: bool) -> dict[str, Any]:
    """One DPO fit of lit_llm's real stage in this process: per-step losses and times, first batch, digest."""
    import cProfile
    import pstats
    import warnings

    import lightning
    import lightning.pytorch as pl
    import torch

    import lit_llm
    from lit_llm.cli import LitLLMCLI
    from lit_llm.losses import IGNORE_INDEX

    class Recorder(pl.Callback):
        """End time of each training batch (and the first one's start), its loss, and the first batch."""

        def __init__(self) -> None:
            self.ends, self.losses, self.start, self.first = [], [], 0.0, None

        def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: dict,
                                 batch_idx: int) -> None:
            if self.first is None:
                self.start, self.first = time.perf_counter(), batch

        def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: dict,
                               batch_idx: int) -> None:
            self.ends.append(time.perf_counter())
            self.losses.append(float(outputs["loss"]))

    class StepProfile(pl.Callback):
        """cProfile and torch.profiler over the steps past the warm-up, to <out>/profile.txt (slows them down)."""

        def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
            if trainer.global_step == WARMUP_STEPS:
                self.py, self.ops = cProfile.Profile(), torch.profiler.profile()
                self.ops.__enter__()
                self.py.enable()

        def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.py.disable()
            self.ops.__exit__(None, None, None)
            with open(out / "profile.txt", "w") as f:
                pstats.Stats(self.py, stream=f).sort_stats("cumulative").print_stats(40)
                pstats.Stats(self.py, stream=f).sort_stats("tottime").print_stats(25)
                f.write(self.ops.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))

    args = ["--model=lit_llm.DPOModule", f"--model.init_from={work / 'model'}", f"--model.beta={BETA}",
            "--model.loss_type=sigmoid", f"--model.precompute_ref_logprobs={str(precompute).lower()}",
            f"--model.optim.lr={LR}", f"--model.optim.betas=[{BETAS[0]},{BETAS[1]}]", f"--model.optim.eps={EPS}",
            f"--model.optim.weight_decay={WEIGHT_DECAY}", "--model.optim.warmup_steps=0",
            "--model.optim.schedule=constant", f"--data={__name__}.SequentialPreferenceData",
            f"--data.source={work / 'pairs.jsonl'}", f"--data.val_source={work / 'val.jsonl'}",
            f"--data.max_length={MAX_LENGTH}", f"--data.batch_size={BATCH}", f"--seed_everything={SEED}",
            "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
            f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
            "--trainer.log_every_n_steps=10", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={out / 'run'}",
            "--trainer.logger=lit_llm.tracking.MLflowLogger", "--trainer.logger.init_args.experiment_name=dpo-vs-trl",
            f"--trainer.logger.init_args.tracking_uri=sqlite:///{work / 'mlflow.db'}",
            f"--trainer.logger.init_args.artifact_location={work / 'mlartifacts'}", "--gold.examples=0"]
    if clip > 0:
        args.append(f"--trainer.gradient_clip_val={clip}")
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    cli = LitLLMCLI(args=args, run=False)
    recorder, module, precompute_s = Recorder(), cli.model, []
    cli.trainer.callbacks.extend([recorder, StepProfile()] if profile else [recorder])
    plain_precompute = module.precompute

    def timed_precompute(loaders: Any) -> dict:
        start, cache = time.perf_counter(), plain_precompute(loaders)
        precompute_s.append(time.perf_counter() - start)
        return cache

    module.precompute = timed_precompute
    cli.trainer.fit(module, datamodule=cli.datamodule)
    data, batch = cli.datamodule, recorder.first
    stats = data.stats["train"]
    assert stats.truncated == stats.dropped_too_long == stats.dropped_identical == 0, stats

    def sequence(ids: list[int], labels: list[int]) -> list[list[int]]:
        return [ids, [t + 1 for t, label in enumerate(labels) if label != IGNORE_INDEX]]

    def row(i: int) -> list[list[int]]:
        n = int(batch["attention_mask"][i].sum())
        return sequence(batch["input_ids"][i, :n].tolist(), batch["labels"][i, :n].tolist())

    first = [[row(c), row(r)] for c, r in zip(batch["chosen_index"].tolist(), batch["rejected_index"].tolist())]
    everything = [[sequence(s.input_ids, s.labels) for s in item.sequences] for item in data.datasets["train"]]
    times = [b - a for a, b in zip([recorder.start, *recorder.ends], recorder.ends)]
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True).stdout.strip()
    package = Path(lit_llm.__file__).parent  # PYTHONPATH may point at another checkout than REPO's
    source = hashlib.sha256(b"".join(f.relative_to(package).as_posix().encode() + f.read_bytes()
                                     for f in sorted(package.rglob("*.py")))).hexdigest()[:16]
    return {"losses": recorder.losses, "step_s": times, "first_batch": first, "digest": digest(everything),
            "precompute_s": sum(precompute_s) if precompute_s else None, "threads": torch.get_num_threads(),
            "versions": {"lit_llm": str(package), "lit_llm_source_sha256": source, "repo": commit,
                         "torch": torch.__version__, "lightning": lightning.__version__},
            "template": data.chat_template_note, "pairs": len(data.datasets["train"])}


# -------------------------------------------------------------------------------------------- TRL worker
def run_trl(work: Path, out: Path, steps: int, clip: float, precompute: bool, optim: str) -> dict[str, Any]:
    """One DPOTrainer fit in this process (TRL's venv): per-step losses and times, first batch, digest."""
    os.environ["HF_DATASETS_CACHE"] = str(out / "datasets")  # fresh per round: no cached reference log-probs
    import accelerate
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    tokenizer.eos_token = END_OF_TURN  # TRL appends eos to each response; ours ends at the turn's <|end|>

    def as_text(example: dict) -> dict:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": example["prompt"]}], tokenize=False,
                                               add_generation_prompt=True)
        return {"prompt": prompt.removeprefix(tokenizer.bos_token)}  # the tokenizer adds bos itself

    raw = datasets.load_dataset("json", data_files=str(work / "pairs.jsonl"), split="train")
    train = raw.map(as_text).select_columns(["prompt", "chosen", "rejected"])

    class Timed(TrainerCallback):
        """End time of each optimizer step (and the first one's start)."""

        def __init__(self) -> None:
            self.start, self.ends = 0.0, []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = self.start or time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter())

    class RecordingDPOTrainer(trl.DPOTrainer):
        """DPOTrainer that keeps each step's loss and first batch, and times the reference precompute."""

        precompute_s = 0.0

        def training_step(self, model: Any, inputs: dict, *args: Any, **kwargs: Any) -> torch.Tensor:
            if not hasattr(self, "losses"):
                self.losses, self.first = [], {k: v.clone() for k, v in inputs.items()}
            loss = super().training_step(model, inputs, *args, **kwargs)
            self.losses.append(float(loss))
            return loss

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            start, result = time.perf_counter(), super()._precompute_ref_logps(*args, **kwargs)
            self.precompute_s += time.perf_counter() - start
            return result

    config = trl.DPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS,
        weight_decay=WEIGHT_DECAY, max_grad_norm=clip, optim=optim, beta=BETA, loss_type=["sigmoid"],
        max_length=MAX_LENGTH, precompute_ref_log_probs=precompute, bf16=False, fp16=False,
        gradient_checkpointing=False, train_sampling_strategy="sequential", logging_steps=10, report_to="none",
        save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=SEED, use_cpu=True,
        model_init_kwargs={"dtype": "float32"}, dataloader_num_workers=0)
    timer = Timed()
    trainer = RecordingDPOTrainer(model=str(work / "model"), args=config, train_dataset=train,
                                  processing_class=tokenizer, callbacks=[timer])
    trainer.train()
    decayed = [p for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    matrices = [p for p in trainer.model.parameters() if p.dim() >= 2]
    assert {id(p) for p in decayed} == {id(p) for p in matrices}, "TRL's weight-decay groups differ from ours"
    b = trainer.first
    half = b["input_ids"].shape[0] // 2

    def row(i: int) -> list[list[int]]:
        n = int(b["attention_mask"][i].sum())
        return [b["input_ids"][i, :n].tolist(), b["completion_mask"][i, :n].nonzero().flatten().tolist()]

    def sequence(prompt: list[int], response: list[int]) -> list[list[int]]:
        return [prompt + response, list(range(len(prompt), len(prompt) + len(response)))]

    rows = trainer.train_dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list()
    everything = [[sequence(r["prompt_ids"], r["chosen_ids"]), sequence(r["prompt_ids"], r["rejected_ids"])]
                  for r in rows]
    times = [e - s for s, e in zip([timer.start, *timer.ends], timer.ends)]
    versions = {m.__name__: m.__version__ for m in (trl, transformers, torch, accelerate, datasets)}
    return {"losses": trainer.losses, "step_s": times, "first_batch": [[row(p), row(p + half)] for p in range(half)],
            "digest": digest(everything), "precompute_s": trainer.precompute_s if precompute else None,
            "threads": torch.get_num_threads(), "versions": versions, "optim": config.optim, "pairs": len(rows)}


# -------------------------------------------------------------------------------------------- driver
def launch(side: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One worker in a fresh process (TRL's python for TRL), with the load average around it."""
    python = args.trl_python if side == "trl" else sys.executable
    command = [python, __file__, "--worker", side, "--work", str(args.work), "--worker-out", str(out),
               "--steps", str(args.steps), "--threads", str(args.threads), "--clip", str(args.clip),
               "--trl-optim", args.trl_optim] + ["--precompute"] * args.precompute + ["--profile"] * args.profile
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    out.mkdir(parents=True, exist_ok=True)
    load_start, start = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=out)
    if proc.returncode != 0:
        sys.exit(f"{side} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith(RESULT))
    result = json.loads(line[len(RESULT):])
    result.update(load_start=load_start, load_end=os.getloadavg()[0], process_s=time.perf_counter() - start)
    result["median_step_s"] = statistics.median(result["step_s"][WARMUP_STEPS:])
    result["pairs_per_s"] = BATCH / result["median_step_s"]
    return result


def compare(trl_run: dict[str, Any], ours: dict[str, Any], tol: float) -> dict[str, Any]:
    """Same tokens (first batch, all pairs' digest), ln 2 at step 1, losses within `tol`; failures in "failed"."""
    failed = ["the first batches' tokens differ"] * (len(ours["first_batch"]) != BATCH or trl_run["first_batch"]
                                                     != ours["first_batch"])
    failed += ["the pairs' tokens differ (digest)"] * (trl_run["digest"] != ours["digest"])
    failed += [f"{name}'s first loss {run['losses'][0]} is not ln 2" for name, run in (("TRL", trl_run), ("ours", ours))
               if abs(run["losses"][0] - math.log(2)) >= 1e-5]
    diffs = [abs(a - b) for a, b in zip(trl_run["losses"], ours["losses"], strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    failed += [f"losses differ by {diffs[worst]:.2e} at step {worst} (tolerance {tol:g})"] * (diffs[worst] >= tol)
    return {"max_abs_loss_diff": diffs[worst], "at_step": worst, "failed": failed,
            "final_losses": [trl_run["losses"][-1], ours["losses"][-1]]}


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of (TRL run, our run), alternating")
    p.add_argument("--steps", type=int, default=60, help=f"training steps per run (the first {WARMUP_STEPS} untimed)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each worker")
    p.add_argument("--precompute", action="store_true", help="precomputed reference log-probs on both sides")
    p.add_argument("--pairs", type=int, default=2000, help="preference pairs written for both sides")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping on both sides (0: none)")
    p.add_argument("--loss-tol", type=float, default=3e-5,
                   help="largest |loss difference| allowed at any step (see the docstring; raise it for long runs)")
    p.add_argument("--trl-python", default="/tmp/trl_env/bin/python", help="python of the venv with TRL")
    p.add_argument("--trl-optim", default="adamw_torch_fused",
                   help="TRL's `optim` (its default with torch >= 2.8, the fused kernel)")
    p.add_argument("--profile", action="store_true",
                   help="instead: one profiled run of ours (cProfile + torch.profiler past the warm-up)")
    p.add_argument("--work", type=Path, default=None, help="setup folder (default: a new temporary one)")
    p.add_argument("--out", default="dpo_vs_trl.json")
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        if args.worker == "ours":
            result = run_ours(args.work, args.worker_out, args.steps, args.clip, args.precompute, args.profile)
        else:
            result = run_trl(args.work, args.worker_out, args.steps, args.clip, args.precompute, args.trl_optim)
        print(RESULT + json.dumps(result))
        return
    if args.steps <= WARMUP_STEPS + 1:
        p.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="dpo_vs_trl_"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    setup(args.work, args.pairs)
    if args.profile:
        run = launch("ours", args, args.work / "profiled")
        print((args.work / "profiled" / "profile.txt").read_text())
        print(f"profiled run: {run['pairs_per_s']:.1f} pairs/s (slowed by the profilers)")
        return
    from lit_llm.tracking import cpu_model

    result: dict[str, Any] = {"command": " ".join([sys.executable, *sys.argv]), "machine": platform.machine(),
                              "cpu": cpu_model(),
                              "cpus": os.cpu_count(), "threads": args.threads, "precompute": args.precompute,
                              "steps": args.steps, "batch_pairs": BATCH, "warmup_steps": WARMUP_STEPS,
                              "work": str(args.work), "rounds": []}
    for r in range(args.rounds):
        runs = {side: launch(side, args, args.work / f"round{r}-{side}") for side in ("trl", "ours")}  # in turn
        row = {"round": r, **{f"{side}_{key}": run[key] for side, run in runs.items()
                              for key in ("pairs_per_s", "median_step_s", "precompute_s", "load_start", "load_end",
                                          "threads", "process_s", "losses", "step_s")}}
        row["ratio"] = runs["ours"]["pairs_per_s"] / runs["trl"]["pairs_per_s"]
        row.update(compare(runs["trl"], runs["ours"], args.loss_tol))
        result["versions"] = {"trl_env": runs["trl"]["versions"], "ours": runs["ours"]["versions"]}
        result["trl_optim"], result["template"] = runs["trl"]["optim"], runs["ours"]["template"]
        result["rounds"].append(row)
        pre = (f", precompute TRL {row['trl_precompute_s']:.2f} s / ours {row['ours_precompute_s']:.2f} s"
               if args.precompute else "")
        print(f"round {r}: TRL {row['trl_pairs_per_s']:.1f} pairs/s, ours {row['ours_pairs_per_s']:.1f} pairs/s, "
              f"ratio {row['ratio']:.3f}{pre}; max |loss diff| {row['max_abs_loss_diff']:.2e} "
              f"(load {row['trl_load_start']:.2f} -> {row['ours_load_end']:.2f})", flush=True)
    ratios = [row["ratio"] for row in result["rounds"]]
    result["median_ratio"] = statistics.median(ratios)
    for key in ("pairs_per_s", "precompute_s") if args.precompute else ("pairs_per_s",):
        result[f"median_{key}"] = {side: statistics.median(row[f"{side}_{key}"] for row in result["rounds"])
                                   for side in ("trl", "ours")}
    result["max_abs_loss_diff"] = max(row["max_abs_loss_diff"] for row in result["rounds"])
    Path(args.out).write_text(json.dumps(result, indent=2))
    medians = {k: v for k, v in result.items() if k.startswith("median_")}
    print(f"{medians} over {len(ratios)} rounds; max |loss diff| {result['max_abs_loss_diff']:.2e}; versions "
          f"{result['versions']}; wrote {args.out}")
    if failed := [f"round {row['round']}: {f}" for row in result["rounds"] for f in row["failed"]]:
        sys.exit("FAILED: " + "; ".join(failed))


if __name__ == "__main__":
    main()
