"""`lit-llm bench`: how fast lit_llm runs on the machine at hand (CPU or one CUDA device).

Sections (each can be left out with --skip):

    matmul    achieved FLOP/s of square matmuls at --dtype; the best is `peak_flops`, the MFU denominator here
              and in the Throughput callback (`Throughput(peak_flops="bench.json")`)
    train     tokens/s and MFU of PretrainLM's training step (forward, loss, backward, gradient clipping, AdamW)
              under a Lightning Trainer at the --dtype precision, per model size (PRESETS), on random tokens
    generate  greedy `generate` tokens/s with and without the KV cache, random weights and prompts, no eos
    dpo       DPOModule's training step: policy and reference forward over chosen+rejected rows, backward, AdamW
    ppo       one PPO iteration of PPOModule (rollout generation / scoring / clipped updates)

The results go to a JSON file (--out) and optionally a markdown report (--report), with the machine, the
1-minute load average at start and end (a shared machine gives lower numbers) and the command that produced them.

Deliberate simplifications:
- Random weights, tokens and prompts: speed does not depend on the values. The DPO and PPO models are random
  backbones with the byte-level tokenizer (one token per byte, so their task-world sequences are long in
  tokens), saved as checkpoints in a temporary directory: no training, no download.
- A step's time runs from `on_train_batch_start` to `on_train_batch_end`, the accelerator synchronised: data
  loading is left out, Lightning's per-step hooks are in. The median over the steps after warm-up is reported.
- MFU counts `Transformer.flops_per_token` (PaLM's 6N + 12·L·d·T, attention over the full T×T) against the
  measured matmul peak, not a datasheet number; against a datasheet peak MFU is lower.
- DPO runs its reference forward in every step (the recipes' `precompute_ref_logprobs` removes it).
"""

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lit_llm.checkpoint import META_KEY, checkpoint_meta
from lit_llm.data.preference import PreferenceDataModule
from lit_llm.data.prompts import PromptDataModule
from lit_llm.generation import generate
from lit_llm.model import ModelConfig, Transformer
from lit_llm.optim import OptimConfig
from lit_llm.stages.dpo import DPOModule
from lit_llm.rollout import RolloutConfig
from lit_llm.stages.ppo import PPOModule
from lit_llm.stages.ppo_parts import PPOUpdate
from lit_llm.stages.pretrain import PretrainLM
from lit_llm.tokenizer import Tokenizer
from lit_llm.tracking import git_sha, hardware

SECTIONS = ("matmul", "train", "generate", "dpo", "ppo")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISIONS = {"float32": "32-true", "bfloat16": "bf16-mixed", "float16": "16-mixed"}

# Model sizes as ModelConfig kwargs. "tiny" is configs/pretrain/tiny.yaml's backbone (with its tokenizer's
# vocabulary), "small" the 12M model of reports/generation.md, "gpt2-124m" GPT-2 small's shape (our SwiGLU
# width 2048 keeps it at ~124M parameters; only sensible on a GPU).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=512, n_layer=4, n_head=4, n_kv_head=2, d_model=128, max_seq_len=256),
    "small": dict(vocab_size=4096, n_layer=6, n_head=6, d_model=384, max_seq_len=512),
    "gpt2-124m": dict(vocab_size=50304, n_layer=12, n_head=12, d_model=768, max_seq_len=1024),
}
# (batch, seq_len) of a training step: the tiny recipe's, then what one device holds comfortably.
TRAIN_SHAPES: dict[str, tuple[int, int]] = {"tiny": (16, 128), "small": (8, 256), "gpt2-124m": (16, 1024)}

Log = Callable[[str], None]


@dataclass
class Settings:
    """Everything a bench run does; defaults per device in `default_settings`, overridden by the options."""

    device: str
    dtype: str
    quick: bool
    matmul_sizes: list[int]
    matmul_reps: int
    sizes: list[str]
    train_batch: int | None  # for every size; None = TRAIN_SHAPES
    train_seq_len: int | None
    warmup: int  # untimed training / DPO steps and PPO iterations
    steps: int  # timed ones
    gen_size: str
    gen_batch_sizes: list[int]
    prompt_len: int
    new_tokens: int
    rl_size: str
    dpo_batch_size: int
    dpo_max_length: int
    ppo_batch_size: int
    ppo_mini_batch_size: int
    ppo_epochs: int
    ppo_new_tokens: int


def default_settings(device: str, quick: bool) -> dict[str, Any]:
    """Sizes and repetitions that finish in a few minutes on 2 CPU cores, or exercise a GPU; --quick: seconds."""
    if quick:
        return dict(matmul_sizes=[128, 256], matmul_reps=2, sizes=["tiny"], train_batch=4, train_seq_len=32,
                    warmup=1, steps=2, gen_size="tiny", gen_batch_sizes=[1, 2], prompt_len=16, new_tokens=8,
                    rl_size="tiny", dpo_batch_size=2, dpo_max_length=128, ppo_batch_size=4, ppo_mini_batch_size=4,
                    ppo_epochs=1, ppo_new_tokens=4)
    gpu = device == "cuda"
    return dict(matmul_sizes=[1024, 2048, 4096] if gpu else [512, 1024, 2048], matmul_reps=50 if gpu else 4,
                sizes=["small", "gpt2-124m"] if gpu else ["tiny", "small"], train_batch=None,
                train_seq_len=None, warmup=5 if gpu else 2, steps=20 if gpu else 5, gen_size="small",
                gen_batch_sizes=[1, 8, 64] if gpu else [1, 8], prompt_len=128, new_tokens=128 if gpu else 64,
                rl_size="small" if gpu else "tiny", dpo_batch_size=16, dpo_max_length=128, ppo_batch_size=32,
                ppo_mini_batch_size=16, ppo_epochs=2, ppo_new_tokens=16)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="lit-llm bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: cuda if available")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="matmul dtype and training precision (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--sizes", default=None, help=f"comma-separated model sizes of {list(PRESETS)} "
                                                 "(default: tiny,small on CPU, small,gpt2-124m on CUDA)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch for every size (default per size)")
    p.add_argument("--seq-len", type=int, default=None, help="training sequence length (default per size)")
    p.add_argument("--steps", type=int, default=None, help="timed training/DPO steps and PPO iterations")
    p.add_argument("--gen-batch-sizes", type=int, nargs="+", default=None, help="generation batch sizes")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per row")
    p.add_argument("--rl-size", choices=list(PRESETS), default=None, help="model size of the DPO and PPO steps")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--skip", action="append", default=[], help=f"sections to leave out, of {list(SECTIONS)} "
                                                               "(comma-separated or repeated)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (seconds; for tests)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON results (default bench.json)")
    p.add_argument("--report", type=Path, default=None, help="also write a markdown report here")
    return p.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> Settings:
    """The device (auto-detected), the dtype's default and the per-device defaults, then the options."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lit-llm bench: --device cuda, but torch sees no CUDA device")
    values = default_settings(device, args.quick)
    overrides = {"sizes": args.sizes.split(",") if args.sizes else None, "train_batch": args.batch_size,
                 "train_seq_len": args.seq_len, "steps": args.steps, "gen_batch_sizes": args.gen_batch_sizes,
                 "new_tokens": args.new_tokens, "rl_size": args.rl_size}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = [s for s in values["sizes"] if s not in PRESETS]
    if unknown:
        raise SystemExit(f"lit-llm bench: unknown sizes {unknown}; known: {list(PRESETS)}")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    return Settings(device=device, dtype=dtype, quick=args.quick, **values)


def skipped_sections(skip: list[str]) -> set[str]:
    names = {name.strip() for item in skip for name in item.split(",") if name.strip()}
    unknown = names - set(SECTIONS)
    if unknown:
        raise SystemExit(f"lit-llm bench: unknown --skip {sorted(unknown)}; sections: {list(SECTIONS)}")
    return names


# ------------------------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times cover it."""
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(settings: Settings) -> contextlib.AbstractContextManager:
    """The training precision's autocast for code that runs outside a Trainer (generation)."""
    if settings.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=settings.device, dtype=DTYPES[settings.dtype])


class StepTimer(pl.Callback):
    """Wall time of every training batch, plus the module's logged per-step timings (PPO's split).

    Args:
        device: "cpu" or "cuda" (synchronised before reading the clock).
    """

    KEYS = ("train/time_generate_s", "train/time_score_s", "train/time_update_s", "train/response_length")

    def __init__(self, device: str) -> None:
        self.device = device
        self.rows: list[dict[str, float]] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        sync(self.device)
        row = {"step_s": time.perf_counter() - self._start}
        metrics = trainer.callback_metrics
        row.update({key.removeprefix("train/"): float(metrics[key]) for key in self.KEYS if key in metrics})
        if isinstance(batch, dict) and torch.is_tensor(batch.get("input_ids")):
            row["rows"], row["columns"] = batch["input_ids"].shape
        self.rows.append(row)


def fit_timed(module: pl.LightningModule, data: Any, settings: Settings, max_steps: int,
              batches_per_step: int = 1, **trainer_kwargs: Any) -> list[dict[str, float]]:
    """Train `module` for `max_steps` optimizer steps without logging, validation or checkpoints; the timings
    of the batches after the warm-up (`settings.warmup` batches)."""
    timer = StepTimer(settings.device)
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(accelerator=settings.device, devices=1, precision=PRECISIONS[settings.dtype],
                             max_steps=max_steps, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                             num_sanity_val_steps=0, callbacks=[timer], default_root_dir=root, **trainer_kwargs)
        if isinstance(data, pl.LightningDataModule):
            trainer.fit(module, datamodule=data)
        else:
            trainer.fit(module, train_dataloaders=data)
    return timer.rows[settings.warmup:]


def median_of(rows: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(row[key] for row in rows))


# ------------------------------------------------------------------------------------------------ matmul
def matmul_seconds(n: int, dtype: torch.dtype, device: str, reps: int, trials: int = 3) -> float:
    """Seconds per (n×n)·(n×n) matmul: the best of `trials` timings of `reps` back-to-back matmuls, after a
    warm-up (one synchronisation per trial, so a GPU's launch latency is hidden as in a real step)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    for _ in range(max(1, reps // 5)):
        torch.mm(a, b, out=out)
    sync(device)
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        sync(device)
        times.append((time.perf_counter() - start) / reps)
    return min(times)


def bench_matmul(settings: Settings, log: Log) -> dict[str, Any]:
    """FLOP/s per matmul size (2n³ FLOPs each) and the best of them, `peak_flops`."""
    rows = []
    for n in settings.matmul_sizes:
        seconds = matmul_seconds(n, DTYPES[settings.dtype], settings.device, settings.matmul_reps)
        rows.append({"size": n, "seconds": seconds, "flops": 2 * n**3 / seconds})
        log(f"matmul {n}x{n} {settings.dtype}: {format_flops(rows[-1]['flops'])}")
    return {"dtype": settings.dtype, "reps": settings.matmul_reps, "rows": rows,
            "peak_flops": max(row["flops"] for row in rows)}


# --------------------------------------------------------------------------------------------- training
def random_batches(vocab_size: int, batch: int, seq_len: int, n: int) -> DataLoader:
    """`n` pretraining batches of random tokens: inputs and next-token labels, (batch, seq_len) each."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab_size, (n, batch, seq_len + 1), generator=g)
    # batch_size=None: the items are whole batches already (a bare list would be read as a list of loaders)
    return DataLoader([{"input_ids": t[:, :-1], "labels": t[:, 1:]} for t in tokens], batch_size=None)


def bench_train_size(name: str, settings: Settings, peak_flops: float | None, log: Log) -> dict[str, Any]:
    """Tokens/s and MFU of PretrainLM's training step for one model size."""
    config = ModelConfig(**PRESETS[name])
    batch = settings.train_batch or TRAIN_SHAPES[name][0]
    seq_len = settings.train_seq_len or TRAIN_SHAPES[name][1]
    torch.manual_seed(0)
    module = PretrainLM(backbone=config, optim=OptimConfig(warmup_steps=0))
    module.model = Transformer(config)  # configure_model keeps an existing model: no tokenizer needed
    steps = settings.warmup + settings.steps
    rows = fit_timed(module, random_batches(config.vocab_size, batch, seq_len, steps), settings, steps,
                     gradient_clip_val=1.0)
    step_s = median_of(rows, "step_s")
    tokens_per_s = batch * seq_len / step_s
    flops = module.model.flops_per_token(seq_len)
    mfu = flops * tokens_per_s / peak_flops if peak_flops else None
    log(f"train {name} ({module.model.num_params() / 1e6:.2f}M params, batch {batch} x {seq_len}): "
        f"{step_s * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, MFU {format_share(mfu)}")
    return {"size": name, "config": config.to_dict(), "params": module.model.num_params(), "batch": batch,
            "seq_len": seq_len, "precision": PRECISIONS[settings.dtype], "steps": len(rows), "step_s": step_s,
            "tokens_per_s": tokens_per_s, "flops_per_token": flops, "achieved_flops": flops * tokens_per_s,
            "mfu": mfu}


# ------------------------------------------------------------------------------------------- generation
def time_generation(model: Transformer, batch_size: int, prompt_len: int, new_tokens: int, use_cache: bool,
                    device: str = "cpu") -> float:
    """Seconds for one greedy generate() call of `new_tokens` tokens per row (after one short warm-up call)."""
    g = torch.Generator().manual_seed(batch_size)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=g).to(device)
    mask = torch.ones_like(prompt)
    generate(model, prompt, mask, max_new_tokens=4, temperature=0, use_cache=use_cache)  # warm-up
    sync(device)
    start = time.perf_counter()
    out = generate(model, prompt, mask, max_new_tokens=new_tokens, temperature=0, use_cache=use_cache)
    sync(device)
    elapsed = time.perf_counter() - start
    assert out.response.shape == (batch_size, new_tokens)  # no eos: every row generated every token
    return elapsed


def generation_rows(model: Transformer, batch_sizes: list[int], prompt_len: int, new_tokens: int,
                    device: str = "cpu", log: Log | None = None) -> list[dict[str, float]]:
    """Cached and uncached tokens/s per batch size; tokens/s = batch × new_tokens / wall time (prefill in)."""
    rows = []
    for bs in batch_sizes:
        cached = time_generation(model, bs, prompt_len, new_tokens, use_cache=True, device=device)
        uncached = time_generation(model, bs, prompt_len, new_tokens, use_cache=False, device=device)
        n = bs * new_tokens
        rows.append(dict(batch_size=bs, cached_s=cached, uncached_s=uncached, cached_tok_s=n / cached,
                         uncached_tok_s=n / uncached, speedup=uncached / cached))
        if log:
            log(f"generate batch {bs}: cached {n / cached:,.1f} tok/s, uncached {n / uncached:,.1f} tok/s "
                f"({uncached / cached:.2f}x)")
    return rows


def bench_generate(settings: Settings, log: Log) -> dict[str, Any]:
    """KV-cached vs uncached greedy generation on a random model of size `gen_size`."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**PRESETS[settings.gen_size])).to(settings.device).eval()
    with autocast(settings):
        rows = generation_rows(model, settings.gen_batch_sizes, settings.prompt_len, settings.new_tokens,
                               settings.device, log)
    return {"size": settings.gen_size, "params": model.num_params(), "prompt_len": settings.prompt_len,
            "new_tokens": settings.new_tokens, "dtype": settings.dtype, "rows": rows}


# --------------------------------------------------------------------------------------------- DPO, PPO
def write_rl_checkpoints(directory: Path, size: str) -> tuple[str, str]:
    """A random policy (as an SFT checkpoint) and a reward model (the same backbone with a random head), with
    the package's checkpoint metadata and the byte-level tokenizer; returns their paths."""
    tokenizer = Tokenizer.byte_level()
    config = ModelConfig(**{**PRESETS[size], "vocab_size": tokenizer.vocab_size})
    torch.manual_seed(0)
    state = {f"model.{k}": v for k, v in Transformer(config).state_dict().items()}
    policy, reward = directory / "policy.ckpt", directory / "reward.ckpt"
    torch.save({"state_dict": state, META_KEY: checkpoint_meta("sft", config, tokenizer, None)}, policy)
    head = {"head.weight": 0.02 * torch.randn(1, config.d_model), "head.bias": torch.zeros(1),
            "reward_mean": torch.tensor(0.0), "reward_std": torch.tensor(1.0)}
    meta = {**checkpoint_meta("reward", config, tokenizer, None), "reward_stats": {"mean": 0.0, "std": 1.0}}
    torch.save({"state_dict": {**state, **head}, META_KEY: meta}, reward)
    return str(policy), str(reward)


def bench_dpo(settings: Settings, policy: str, log: Log) -> dict[str, Any]:
    """Median time of DPOModule's training step on task-world pairs (reference forward in every step)."""
    steps = settings.warmup + settings.steps
    module = DPOModule(policy, optim=OptimConfig(warmup_steps=0))
    data = PreferenceDataModule(num_pairs=settings.dpo_batch_size * steps, num_ranked=0, num_val_pairs=1,
                                num_val_ranked=0, max_length=settings.dpo_max_length,
                                batch_size=settings.dpo_batch_size, tokenizer_from=policy)
    rows = fit_timed(module, data, settings, steps, gradient_clip_val=1.0)
    step_s = median_of(rows, "step_s")
    result = {"size": settings.rl_size, "params": module.model.num_params(), "pairs": settings.dpo_batch_size,
              "rows": median_of(rows, "rows"), "columns": median_of(rows, "columns"), "steps": len(rows),
              "step_s": step_s, "pairs_per_s": settings.dpo_batch_size / step_s}
    log(f"dpo {settings.rl_size} ({settings.dpo_batch_size} pairs, {result['rows']:.0f} rows x "
        f"{result['columns']:.0f} tokens): {step_s * 1e3:.1f} ms/step")
    return result


def bench_ppo(settings: Settings, policy: str, reward: str, log: Log) -> dict[str, Any]:
    """Median time of one PPO iteration and its generate / score / update split (PPOModule's own timings)."""
    rollouts = settings.warmup + settings.steps
    module = PPOModule(policy, reward, optim=OptimConfig(warmup_steps=0),
                       rollout=RolloutConfig(max_new_tokens=settings.ppo_new_tokens),
                       update=PPOUpdate(ppo_epochs=settings.ppo_epochs, mini_batch_size=settings.ppo_mini_batch_size),
                       rollout_table_every=0)
    data = PromptDataModule(num_prompts=settings.ppo_batch_size * rollouts, num_val_prompts=1,
                            max_prompt_length=256, batch_size=settings.ppo_batch_size, tokenizer_from=policy)
    updates = settings.ppo_epochs * math.ceil(settings.ppo_batch_size / settings.ppo_mini_batch_size)
    rows = fit_timed(module, data, settings, updates * rollouts)
    result = {"size": settings.rl_size, "params": module.model.num_params(), "prompts": settings.ppo_batch_size,
              "mini_batch_size": settings.ppo_mini_batch_size, "ppo_epochs": settings.ppo_epochs,
              "max_new_tokens": settings.ppo_new_tokens, "rollouts": len(rows)}
    for key in ("step_s", "time_generate_s", "time_score_s", "time_update_s", "response_length"):
        result[key] = median_of(rows, key)
    log(f"ppo {settings.rl_size} ({settings.ppo_batch_size} prompts, {updates} updates): "
        f"{result['step_s'] * 1e3:.0f} ms/iteration (generate {result['time_generate_s'] * 1e3:.0f}, "
        f"score {result['time_score_s'] * 1e3:.0f}, update {result['time_update_s'] * 1e3:.0f} ms)")
    return result


# ------------------------------------------------------------------------------------------------ a run
def machine_info(settings: Settings) -> dict[str, Any]:
    """Where the numbers come from: CPU/GPU, cores, threads, versions, and whether it is a virtual machine."""
    info: dict[str, Any] = dict(hardware())
    info.pop("load_avg_1m", None)  # recorded at start and end instead
    info["torch_threads"] = torch.get_num_threads()
    try:
        info["virtual_machine"] = " hypervisor " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        pass
    info.update(python=platform.python_version(), torch=torch.__version__, device=settings.device,
                git_sha=git_sha())
    if settings.device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def run_sections(settings: Settings, skip: set[str], log: Log) -> dict[str, Any]:
    """Every section not in `skip`, in order (the matmul peak first: MFU needs it)."""
    result: dict[str, Any] = {}
    if "matmul" not in skip:
        result["matmul"] = bench_matmul(settings, log)
        result["peak_flops"] = result["matmul"]["peak_flops"]
    if "train" not in skip:
        result["train"] = [bench_train_size(name, settings, result.get("peak_flops"), log)
                           for name in settings.sizes]
    if "generate" not in skip:
        result["generate"] = bench_generate(settings, log)
    if {"dpo", "ppo"} - skip:
        with tempfile.TemporaryDirectory() as directory:
            policy, reward = write_rl_checkpoints(Path(directory), settings.rl_size)
            if "dpo" not in skip:
                result["dpo"] = bench_dpo(settings, policy, log)
            if "ppo" not in skip:
                result["ppo"] = bench_ppo(settings, policy, reward, log)
    return result


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide the Trainer's banner lines and data-loader advice for the bench's many short fits."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for message in ("does not have many workers", "but have no `val_dataloader`", "LeafSpec"):
                warnings.filterwarnings("ignore", message=f".*{message}")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_bench(settings: Settings, skip: set[str], command: str, log: Log = print) -> dict[str, Any]:
    """The whole bench: machine, settings, load average at start and end, and every section's results."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start, clock = list(os.getloadavg()), time.perf_counter()
    log(f"bench on {settings.device} ({settings.dtype}, {torch.get_num_threads()} CPU threads), 1-minute load "
        f"average {load_start[0]:.2f} on {os.cpu_count()} cores")
    if settings.device == "cpu" and load_start[0] >= 1 and torch.get_num_threads() > 1:
        log("other jobs are running: threads that share busy cores wait on each other; --threads 1 is steadier")
    with quiet_lightning():
        sections = run_sections(settings, skip, log)
    load_end = list(os.getloadavg())
    log(f"done in {time.perf_counter() - clock:.0f} s, 1-minute load average {load_end[0]:.2f}")
    return {"command": command, "started_utc": started, "seconds": time.perf_counter() - clock,
            "machine": machine_info(settings), "settings": dataclasses.asdict(settings),
            "load_avg_start": load_start, "load_avg_end": load_end, **sections}


# ----------------------------------------------------------------------------------------------- report
def format_flops(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def format_share(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.1f}%"


def machine_lines(result: dict[str, Any]) -> list[str]:
    m, s = result["machine"], result["settings"]
    where = f"{m['cpu']}, {m['cpu_cores']} cores" + (" (virtual machine)" if m.get("virtual_machine") else "")
    if m.get("gpu"):
        where = f"{m['gpu']} (CUDA {m['cuda']}) beside {where}"
    return [f"- Machine: {where}; {m['os']}; Python {m['python']}, torch {m['torch']}, "
            f"torch threads {m['torch_threads']}; git {m['git_sha'][:10]}.",
            f"- Device {s['device']}, dtype {s['dtype']} (training precision {PRECISIONS[s['dtype']]}); "
            f"started {result['started_utc']}, {result['seconds']:.0f} s in all.",
            f"- 1-minute load average {result['load_avg_start'][0]:.2f} at start, {result['load_avg_end'][0]:.2f} "
            f"at end (5-minute {result['load_avg_start'][1]:.2f} → {result['load_avg_end'][1]:.2f}). The machine "
            f"may be shared with other jobs: a load above the core count means they competed for the cores, "
            f"and the numbers below are then lower than the machine's own."]


def matmul_table(matmul: dict[str, Any]) -> list[str]:
    lines = [f"## Matmul peak ({matmul['dtype']})", "", "| n | time per matmul | FLOP/s |", "|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['seconds'] * 1e3:.2f} ms | {format_flops(r['flops'])} |" for r in matmul["rows"]]
    return lines + ["", f"**peak_flops = {format_flops(matmul['peak_flops'])}** (best of {len(matmul['rows'])} "
                        f"sizes; each the best of 3 timings of {matmul['reps']} back-to-back matmuls)."]


def train_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Training (PretrainLM step: forward, loss, backward, clipping, AdamW)", "",
             "| size | params | batch × seq_len | step | tokens/s | FLOPs/token | achieved | MFU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['size']} | {r['params'] / 1e6:.2f}M | {r['batch']} × {r['seq_len']} | {r['step_s'] * 1e3:.1f} ms "
              f"| {r['tokens_per_s']:,.0f} | {r['flops_per_token'] / 1e6:.1f}M | {format_flops(r['achieved_flops'])} "
              f"| {format_share(r['mfu'])} |" for r in rows]
    return lines + ["", f"Median of {rows[0]['steps']} timed steps after warm-up; MFU = FLOPs/token × tokens/s ÷ "
                        "peak_flops."]


def generation_table(rows: list[dict[str, float]]) -> str:
    """Markdown table of `generation_rows`."""
    lines = ["| batch | cached tok/s | uncached tok/s | speedup | cached s | uncached s |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch_size']} | {r['cached_tok_s']:.1f} | {r['uncached_tok_s']:.1f} | {r['speedup']:.2f}x "
              f"| {r['cached_s']:.2f} | {r['uncached_s']:.2f} |" for r in rows]
    return "\n".join(lines)


def generate_section(gen: dict[str, Any]) -> list[str]:
    return [f"## Generation (greedy, KV cache vs none; {gen['size']}, {gen['params'] / 1e6:.1f}M params)", "",
            f"Random {gen['prompt_len']}-token prompts, {gen['new_tokens']} new tokens per row, no eos; one timed "
            "call per setting after a 4-token warm-up; tokens/s includes the prompt's prefill.", "",
            generation_table(gen["rows"])]


def rl_section(result: dict[str, Any]) -> list[str]:
    lines = ["## DPO and PPO steps", "", "| step | model | batch | time | split |", "|---|---|---|---:|---|"]
    if "dpo" in result:
        d = result["dpo"]
        lines.append(f"| DPO (policy + reference forward, backward, AdamW) | {d['size']}, {d['params'] / 1e6:.2f}M "
                     f"| {d['pairs']} pairs = {d['rows']:.0f} rows × {d['columns']:.0f} tokens "
                     f"| {d['step_s'] * 1e3:.1f} ms | {d['pairs_per_s']:.1f} pairs/s |")
    if "ppo" in result:
        p = result["ppo"]
        split = " / ".join(f"{p[f'time_{k}_s'] * 1e3:.0f}" for k in ("generate", "score", "update"))
        lines.append(f"| PPO iteration (ppo_epochs {p['ppo_epochs']}, mini-batches of {p['mini_batch_size']}) "
                     f"| {p['size']}, {p['params'] / 1e6:.2f}M | {p['prompts']} prompts, ≤ {p['max_new_tokens']} "
                     f"new tokens (mean {p['response_length']:.1f}) | {p['step_s'] * 1e3:.0f} ms "
                     f"| generate / score / update {split} ms |")
    return lines + ["", "Random backbones with the byte-level tokenizer on task-world pairs and prompts; medians "
                        "after warm-up. PPO has a separate value model; the reward model is a random head."]


def markdown_report(result: dict[str, Any]) -> str:
    """The report: machine and load, then a table per section, and the command that reproduces it."""
    lines = ["# Performance: `lit-llm bench`", "", f"    {result['command']}", "", *machine_lines(result)]
    if result["settings"]["device"] == "cpu":
        lines.append("- CPU only: bf16 and GPU numbers (the gpt2-124m MFU among them) need a run of the same "
                     "command on a GPU machine.")
    if "matmul" in result:
        lines += ["", *matmul_table(result["matmul"])]
    if "train" in result:
        lines += ["", *train_table(result["train"])]
    if "generate" in result:
        lines += ["", *generate_section(result["generate"])]
    if "dpo" in result or "ppo" in result:
        lines += ["", *rl_section(result)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`lit-llm bench [options]`; returns the results it wrote."""
    argv = list(argv or [])
    args = parse_args(argv)
    settings, skip = resolve_settings(args), skipped_sections(args.skip)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run_bench(settings, skip, shlex.join(["lit-llm", "bench", *argv]),
                           log=lambda line: print(f"[bench] {line}", flush=True))
    finally:
        torch.set_num_threads(threads)  # an in-process caller (tests, notebooks) keeps its own setting
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[bench] wrote {args.out}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(markdown_report(result))
        print(f"[bench] wrote {args.report}")
    return result
