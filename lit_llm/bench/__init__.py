"""`lit-llm bench`: how fast lit_llm runs on the machine at hand (CPU or one CUDA device).

Sections (each can be left out with --skip):

    matmul    achieved FLOP/s of square matmuls at --dtype; the best is `peak_flops`, the MFU denominator here
              and in the Throughput callback (`Throughput(peak_flops="bench.json")`)
    train     tokens/s and MFU of PretrainLM's training step (forward, loss, backward, gradient clipping, AdamW)
              under a Lightning Trainer at the --dtype precision, per model size (PRESETS), on random tokens;
              with --compile also each size with its blocks compiled (lit_llm.callbacks.Compile)
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

import dataclasses
import json
import os
import platform
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from lit_llm.bench.markdown import markdown_report
from lit_llm.bench.sections import run_sections
from lit_llm.bench.settings import Log, Settings, parse_args, resolve_settings, skipped_sections
from lit_llm.bench.timing import quiet_lightning
from lit_llm.tracking import git_sha, hardware


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
