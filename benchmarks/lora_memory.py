"""Peak process memory of full fine-tuning vs LoRA (r=16, all-linear) for SFT and DPO, at two model sizes.

    python benchmarks/lora_memory.py [--sizes small,gpt2-124m] [--steps 3] [--batch 8] [--length 256] \
        [--workdir /tmp/lora_memory] [--out /tmp/lora_memory/lora_memory.json] [--env MALLOC_MMAP_THRESHOLD_=65536]

Memory is the peak resident set size of a process (`resource.getrusage(RUSAGE_SELF).ru_maxrss`), so every
measurement is a fresh process (this script re-invoked with `--one KIND STAGE SIZE`) that runs `lit-llm fit` of
configs/sft/tiny.yaml or configs/dpo/tiny.yaml in-process for a few optimizer steps on the built-in task world
(DPO on its offline pairs, reference log-probs precomputed, the default), validation and gold evaluation off,
float32 on CPU, and prints its peak as JSON on its last line. The `PeakMarks` callback also records the peak so
far at four points of the run (model loaded, training about to start (after DPO's reference precompute), training
done, end of fit (after last.ckpt is written)), which says where the peak was reached.

Linux keeps a process's ru_maxrss across exec, and a child starts with its parent's peak: a child of a process
that had built the 124M model reported that process's 1.2 GiB whatever it did itself. So the parent here never
imports torch (the checkpoints are written by a `--setup` child), each child reports the ru_maxrss it started with
(`inherited_mib`, ~10 MiB), and its own high-water mark `VmHWM` of /proc/self/status (`vmhwm_mib`) as a check.

RSS counts memory that glibc's malloc has freed but kept (its heap does not shrink below a live block, and its
mmap threshold rises to 32 MiB after the first large free), so a peak depends on the order of allocations as well
as on what is alive: `--env MALLOC_MMAP_THRESHOLD_=65536` (passed to the children) gives every large tensor its own
mapping, returned on free, so the peak comes close to the live tensors' peak.

The baseline of each kind is a process that imports torch, Lightning and lit_llm's stage code and builds the model
(LoRA: with its adapters, which imports peft); "over baseline" is a run's peak minus its kind's baseline.

Starting checkpoints (cached in --workdir): a randomly initialised `Transformer` of each size of
`lit_llm.bench.settings.PRESETS` ("small" 6x384, vocab 4096; "gpt2-124m" 12x768, vocab 50304), written as a
pretrain-stage checkpoint with the tiny recipe's tokenizer (byte-level BPE, 512 tokens, trained on the task world's
3,000 pretraining documents as configs/pretrain/tiny.yaml does). The model's vocabulary is the preset's, larger than
the tokenizer's: the extra rows are never indexed, but they are weights, gradients and optimizer state like the rest.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("sft", "dpo")
KINDS = ("full", "lora")
LORA_ARGS = ["--model.init_args.lora.r=16", "--model.init_args.lora.target_modules=all-linear"]
MARKS = ("loaded", "train_start", "train_end", "fit_end")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def vmhwm_mib() -> float:
    """This process's own peak RSS (its address space's high-water mark, not inherited across exec)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


if __name__ != "__main__":  # imported by the CLI for `lora_memory.PeakMarks`, inside a measurement: the parent
    import lightning.pytorch as pl  # process never loads torch

    class PeakMarks(pl.Callback):
        """The process's peak RSS so far (MiB) at four points of a fit, in `PeakMarks.marks`."""

        marks: dict[str, float] = {}

        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.marks["loaded"] = peak_mib()  # model built and loaded, data set up; before DPO's precompute

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.marks["train_start"] = peak_mib()

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.marks["train_end"] = peak_mib()  # callbacks run in order: before StageCheckpoint's last save

        def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            self.marks["fit_end"] = peak_mib()


# ------------------------------------------------------------------------------------------------------- setup
def checkpoint_path(workdir: Path, size: str) -> Path:
    return workdir / f"{size}.ckpt"


def setup(workdir: Path, sizes: list[str]) -> None:
    """The tiny recipe's tokenizer, and a random pretrain-stage checkpoint of each size (each made once)."""
    import torch

    from lit_llm.bench.settings import PRESETS
    from lit_llm.checkpoint import checkpoint_meta
    from lit_llm.model import ModelConfig, Transformer
    from lit_llm.tokenizer import Tokenizer
    from lit_llm.world import pretrain_corpus

    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_file = workdir / "tokenizer.json"
    if not tokenizer_file.exists():
        print("training the tiny recipe's tokenizer (512 tokens, 3,000 task-world documents)", flush=True)
        tokenizer = Tokenizer.train(pretrain_corpus(3000, seed=0, split="train").docs, vocab_size=512)
        tokenizer_file.write_text(json.dumps(tokenizer.to_json()))
    tokenizer = Tokenizer.from_json(json.loads(tokenizer_file.read_text()))
    for size in sizes:
        path = checkpoint_path(workdir, size)
        if path.exists():
            continue
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**PRESETS[size]))
        meta = checkpoint_meta("pretrain", model.config, tokenizer, None)
        torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "lit_llm": meta}, path)
        print(f"wrote {path} ({model.num_params() / 1e6:.1f}M parameters, tokenizer {tokenizer.vocab_size})",
              flush=True)


# ------------------------------------------------------------------------------------------ one measurement
def fit_args(kind: str, stage: str, size: str, workdir: Path, steps: int, batch: int, length: int) -> list[str]:
    """`lit-llm fit` of the stage's tiny recipe from the size's checkpoint, `steps` steps, no validation."""
    name = f"{stage}-{size}-{kind}"
    args = ["fit", "--config", str(REPO / "configs" / stage / "tiny.yaml"),
            f"--model.init_args.init_from={checkpoint_path(workdir, size)}",
            f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=0",
            "--trainer.num_sanity_val_steps=0", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={workdir / 'runs' / name}",
            "--trainer.logger.init_args.experiment_name=lora_memory", f"--trainer.logger.init_args.run_name={name}",
            "--trainer.callbacks+=lora_memory.PeakMarks", "--gold.examples=0",
            f"--data.init_args.max_length={length}", f"--data.init_args.batch_size={batch}"]
    if stage == "sft":  # packed rows of ~10 records each: enough rows for every step
        args += [f"--data.init_args.num_records={40 * batch * steps}", "--data.init_args.num_val_records=8"]
    else:
        args += ["--data.init_args.source=tasks", f"--data.init_args.num_pairs={batch * steps}",
                 "--data.init_args.num_ranked=0", "--data.init_args.num_val_pairs=8"]
    return args + (LORA_ARGS if kind == "lora" else [])


def build_only(kind: str, size: str) -> dict:
    """The baseline: the imports of a run and its model (with adapters for LoRA), no data, no training."""
    import importlib

    importlib.import_module("lit_llm.stages.base")  # torch, Lightning, MLflow and lit_llm's stage code, as a run has
    from lit_llm.bench.settings import PRESETS
    from lit_llm.lora import LoRAConfig, apply_lora
    from lit_llm.model import ModelConfig, Transformer

    model = Transformer(ModelConfig(**PRESETS[size]))
    if kind == "lora":
        apply_lora(model, LoRAConfig(r=16, target_modules="all-linear"))
    return {"peak_mib": peak_mib(), "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def measure(kind: str, stage: str, size: str, workdir: Path, steps: int, batch: int, length: int) -> dict:
    """One measurement, in this process: the baseline (stage "build") or a fit, with the peaks."""
    inherited = peak_mib()
    result = {"inherited_mib": inherited, **(build_only(kind, size) if stage == "build" else
                                             fit(kind, stage, size, workdir, steps, batch, length))}
    import torch

    return {**result, "vmhwm_mib": vmhwm_mib(), "torch": torch.__version__}


def fit(kind: str, stage: str, size: str, workdir: Path, steps: int, batch: int, length: int) -> dict:
    from mlflow import MlflowClient

    from lit_llm.cli import fit_run_id
    from lit_llm.commands import main

    args = fit_args(kind, stage, size, workdir, steps, batch, length)
    root = workdir / "runs" / f"{stage}-{size}-{kind}"
    shutil.rmtree(root, ignore_errors=True)
    main(args)
    peak = peak_mib()
    params = MlflowClient().get_run(fit_run_id(root)).data.params
    marks = sys.modules["lora_memory"].PeakMarks.marks  # the class the CLI imported by its class path
    return {"peak_mib": peak, "marks_mib": dict(marks), "trainable_params": int(params["model/trainable_params"]),
            "trainable_share": float(params["model/trainable_share"]), "args": args}


def child(args: list[str], log_name: str, options: argparse.Namespace) -> dict:
    """This script run with `args` in a fresh process, its stderr in <workdir>/logs/; the JSON of its last line."""
    command = [sys.executable, __file__, *args, "--workdir", str(options.workdir), "--steps", str(options.steps),
               "--batch", str(options.batch), "--length", str(options.length)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MLFLOW_TRACKING_URI": f"sqlite:///{options.workdir / 'mlflow.db'}",
           **dict(item.split("=", 1) for item in options.env)}
    log = options.workdir / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        done = subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-40:]
        print(f"FAILED (exit {done.returncode}): {' '.join(command)}\nthe end of {log}:\n" + "\n".join(tail),
              flush=True)
        return {"error": f"exit {done.returncode}", "log": str(log), "log_tail": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------- table
def mib(r: dict, minus: float = 0.0) -> str:
    return f"{r['peak_mib'] - minus:.0f}" if "peak_mib" in r else "failed"


def params(r: dict) -> str:
    return f"{r['trainable_params']:,}" if "trainable_params" in r else "-"


def table(results: dict) -> str:
    lines = ["| size | stage | baseline full / LoRA (MiB) | full (MiB) | LoRA (MiB) | LoRA / full "
             "| full over baseline (MiB) | LoRA over baseline (MiB) | trainable full | trainable LoRA |",
             "|" + " --- |" * 10]
    for size, by_stage in results.items():
        base = by_stage["build"]
        for stage in STAGES:
            full, lora = by_stage[stage]["full"], by_stage[stage]["lora"]
            ratio = f"{lora['peak_mib'] / full['peak_mib']:.2f}" if "peak_mib" in full and "peak_mib" in lora else "-"
            over = [mib(r, base[kind]["peak_mib"]) if "peak_mib" in base[kind] else "-"
                    for kind, r in (("full", full), ("lora", lora))]
            lines.append(f"| {size} | {stage} | {mib(base['full'])} / {mib(base['lora'])} | {mib(full)} | {mib(lora)} "
                         f"| {ratio} | {over[0]} | {over[1]} | {params(full)} | {params(lora)} |")
    return "\n".join(lines)


def marks_table(results: dict) -> str:
    lines = ["| size | stage | kind | " + " | ".join(MARKS) + " | peak | VmHWM | inherited |",
             "|" + " --- |" * (len(MARKS) + 6)]
    for size, by_stage in results.items():
        for stage in ("build", *STAGES):
            for kind, r in by_stage[stage].items():
                if "peak_mib" in r:
                    marks = " | ".join(f"{r['marks_mib'][m]:.0f}" if m in r.get("marks_mib", {}) else "-"
                                       for m in MARKS)
                    lines.append(f"| {size} | {stage} | {kind} | {marks} | {r['peak_mib']:.0f} | "
                                 f"{r['vmhwm_mib']:.0f} | {r['inherited_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,gpt2-124m", help="comma-separated sizes of lit_llm.bench PRESETS")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    p.add_argument("--batch", type=int, default=8, help="SFT rows / DPO pairs per batch")
    p.add_argument("--length", type=int, default=256, help="data.max_length")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/lora_memory"))
    p.add_argument("--out", type=Path, default=None, help="default: <workdir>/lora_memory.json")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable of the measuring processes (e.g. MALLOC_MMAP_THRESHOLD_=65536)")
    p.add_argument("--setup", action="store_true", help="(internal) write the tokenizer and checkpoints")
    p.add_argument("--one", nargs=3, metavar=("KIND", "STAGE", "SIZE"),
                   help="(internal) one measurement: KIND full|lora, STAGE build|sft|dpo")
    args = p.parse_args()
    args.workdir = args.workdir.resolve()
    sizes = args.sizes.split(",")
    if args.setup:
        setup(args.workdir, sizes)
        print(json.dumps({}))
        return
    if args.one:  # sys.path[0] is this folder: the CLI finds `lora_memory.PeakMarks`
        print(json.dumps(measure(*args.one, args.workdir, args.steps, args.batch, args.length)))
        return

    # The measuring processes are children of this one, which therefore never imports torch (module docstring).
    if "error" in child(["--setup", "--sizes", args.sizes], "setup", args):
        sys.exit("setup failed")
    results: dict = {}
    for size in sizes:
        for stage in ("build", *STAGES):
            for kind in KINDS:
                r = child(["--one", kind, stage, size], f"{stage}-{size}-{kind}", args)
                results.setdefault(size, {}).setdefault(stage, {})[kind] = r
                if "peak_mib" in r:
                    print(f"{size} {stage} {kind}: peak {r['peak_mib']:.0f} MiB (VmHWM {r['vmhwm_mib']:.0f}, "
                          f"inherited {r['inherited_mib']:.0f}), {params(r)} trainable", flush=True)
    torch_version = next((r["torch"] for s in results.values() for k in s.values() for r in k.values()
                          if "torch" in r), None)
    out = args.out or args.workdir / "lora_memory.json"
    meta = {"command": "python " + " ".join(sys.argv), "torch": torch_version, "steps": args.steps,
            "batch": args.batch, "length": args.length, "lora": LORA_ARGS, "env": args.env}
    out.write_text(json.dumps({**meta, "results": results}, indent=2))
    print(f"\ntorch {torch_version}, {args.steps} steps, batch {args.batch}, max_length {args.length}, "
          f"env {' '.join(args.env) or '-'}\n\n"
          + table(results) + "\n\nPeak RSS so far (MiB) at points of each run:\n\n" + marks_table(results))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
