"""The sections of a bench run: matmul peak, training steps, generation, a DPO step, a PPO iteration."""

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from lit_llm.bench.markdown import format_flops, format_share
from lit_llm.bench.settings import DTYPES, PRECISIONS, PRESETS, TRAIN_SHAPES, Log, Settings
from lit_llm.bench.timing import autocast, fit_timed, median_of, sync
from lit_llm.callbacks import Compile
from lit_llm.checkpoint import META_KEY, checkpoint_meta
from lit_llm.data.preference import PreferenceDataModule
from lit_llm.data.prompts import PromptDataModule
from lit_llm.generation import generate
from lit_llm.model import ModelConfig, Transformer
from lit_llm.optim import OptimConfig
from lit_llm.rollout import RolloutConfig
from lit_llm.stages.dpo import DPOModule
from lit_llm.stages.ppo import PPOModule
from lit_llm.stages.ppo_parts import PPOUpdate
from lit_llm.stages.pretrain import PretrainLM
from lit_llm.tokenizer import Tokenizer


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


def bench_train_size(name: str, settings: Settings, peak_flops: float | None, log: Log,
                     compiled: bool = False) -> dict[str, Any]:
    """Tokens/s and MFU of PretrainLM's training step for one model size (`compiled`: each block through
    torch.compile by the Compile callback; the warm-up steps take the compilation)."""
    config = ModelConfig(**PRESETS[name])
    batch = settings.train_batch or TRAIN_SHAPES[name][0]
    seq_len = settings.train_seq_len or TRAIN_SHAPES[name][1]
    torch.manual_seed(0)
    module = PretrainLM(backbone=config, optim=OptimConfig(warmup_steps=0))
    module.model = Transformer(config)  # configure_model keeps an existing model: no tokenizer needed
    steps = settings.warmup + settings.steps
    rows = fit_timed(module, random_batches(config.vocab_size, batch, seq_len, steps), settings, steps,
                     callbacks=[Compile()] if compiled else [], gradient_clip_val=1.0)
    step_s = median_of(rows, "step_s")
    tokens_per_s = batch * seq_len / step_s
    flops = module.model.flops_per_token(seq_len)
    mfu = flops * tokens_per_s / peak_flops if peak_flops else None
    log(f"train {name}{' compiled' * compiled} ({module.model.num_params() / 1e6:.2f}M params, "
        f"batch {batch} x {seq_len}): {step_s * 1e3:.1f} ms/step, {tokens_per_s:,.0f} tokens/s, "
        f"MFU {format_share(mfu)}")
    return {"size": name, "compiled": compiled, "config": config.to_dict(), "params": module.model.num_params(),
            "batch": batch, "seq_len": seq_len, "precision": PRECISIONS[settings.dtype], "steps": len(rows),
            "step_s": step_s, "tokens_per_s": tokens_per_s, "flops_per_token": flops,
            "achieved_flops": flops * tokens_per_s, "mfu": mfu}


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


def run_sections(settings: Settings, skip: set[str], log: Log) -> dict[str, Any]:
    """Every section not in `skip`, in order (the matmul peak first: MFU needs it)."""
    result: dict[str, Any] = {}
    if "matmul" not in skip:
        result["matmul"] = bench_matmul(settings, log)
        result["peak_flops"] = result["matmul"]["peak_flops"]
    if "train" not in skip:
        result["train"] = [bench_train_size(name, settings, result.get("peak_flops"), log, compiled)
                           for name in settings.sizes for compiled in ((False, True) if settings.compile else (False,))]
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
