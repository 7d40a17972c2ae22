"""Our KV-cache generation against `transformers`' `generate` on the same exported weights, A/B interleaved.

A random-init backbone (default ~12M parameters, the `small` size of `lit-llm bench`) is exported with
`lit_llm.hf.export_hf` and loaded by `transformers.LlamaForCausalLM`. Both decode greedily from the same random
prompts, with no eos, so every row generates exactly --new-tokens tokens, and the test asserts they choose the same
tokens. tokens/s = batch × new tokens ÷ wall time of the whole call (prefill included); --rounds alternating
(ours, theirs) pairs after one untimed warm-up each; the ratio is the median over rounds. With --compile each round
also times ours with the compiled decode step (`generate(..., compile_backend="inductor")`); its first call per
shape, which compiles, is timed apart.

    python benchmarks/generation_vs_transformers.py --threads 1 --compile --out /tmp/gen_vs_hf.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import LlamaForCausalLM

from lit_llm.bench.settings import PRESETS
from lit_llm.generation import generate
from lit_llm.hf import export_hf
from lit_llm.model import ModelConfig, Transformer
from lit_llm.tracking import cpu_model


def ours(model: Transformer, prompts: torch.Tensor, new_tokens: int, backend: str | None = None) -> torch.Tensor:
    out = generate(model, prompts, torch.ones_like(prompts), new_tokens, temperature=0.0, compile_backend=backend)
    return out.response


def theirs(model: LlamaForCausalLM, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, use_cache=True, eos_token_id=None,
                         pad_token_id=0)
    return out[:, prompts.shape[1]:]


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    tokens = fn(*args)
    if tokens.is_cuda:
        torch.cuda.synchronize()  # kernels run asynchronously: wait for them before reading the clock
    return time.perf_counter() - start, tokens


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (float32 on both)")
    p.add_argument("--compile", action="store_true",
                   help="also time ours with the decode step compiled (generate's compile_backend='inductor') each round")
    p.add_argument("--out", default="generation_vs_transformers.json")
    args = p.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(**PRESETS["small"])
    model = Transformer(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, None, folder)
        hf = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="sdpa").eval()
    model, hf = model.to(args.device), hf.to(args.device)
    result = {"command": "python " + " ".join(sys.argv), "machine": platform.processor() or platform.machine(),
              "cpu": cpu_model(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "params": model.num_params(),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "transformers": transformers.__version__, "load_avg_start": os.getloadavg(), "rows": []}
    for batch in args.batch_sizes:
        prompts = torch.randint(0, config.vocab_size, (batch, args.prompt_len)).to(args.device)
        ours(model, prompts, 4), theirs(hf, prompts, 4)  # warm-up
        if args.compile:  # the first call of a shape compiles the decode step: timed apart, not in the rounds
            compile_s, _ = timed(ours, model, prompts, args.new_tokens, "inductor")
        rounds = []
        for _ in range(args.rounds):
            (t_ours, a), (t_hf, b) = timed(ours, model, prompts, args.new_tokens), timed(theirs, hf, prompts,
                                                                                       args.new_tokens)
            assert torch.equal(a, b), "greedy tokens differ between lit_llm and transformers"
            rounds.append({"ours_s": t_ours, "transformers_s": t_hf, "ratio": t_hf / t_ours})
            if args.compile:
                t_compiled, c = timed(ours, model, prompts, args.new_tokens, "inductor")
                assert torch.equal(c, b), "greedy tokens differ between lit_llm compiled and transformers"
                rounds[-1].update(compiled_s=t_compiled, compiled_ratio=t_hf / t_compiled)
        tokens = batch * args.new_tokens
        row = {"batch": batch, "rounds": rounds, "ratio_median": statistics.median(r["ratio"] for r in rounds),
               "ours_tokens_per_s": tokens / statistics.median(r["ours_s"] for r in rounds),
               "transformers_tokens_per_s": tokens / statistics.median(r["transformers_s"] for r in rounds)}
        if args.compile:
            row.update(compiled_ratio_median=statistics.median(r["compiled_ratio"] for r in rounds),
                       compiled_tokens_per_s=tokens / statistics.median(r["compiled_s"] for r in rounds),
                       first_compiled_call_s=compile_s)
        print(f"batch {batch}: ours {row['ours_tokens_per_s']:.1f} tok/s, transformers "
              f"{row['transformers_tokens_per_s']:.1f} tok/s, ours/theirs speed {row['ratio_median']:.2f}x"
              + (f", ours compiled {row['compiled_ratio_median']:.2f}x" if args.compile else "") + " (same tokens)",
              flush=True)
        result["rows"].append(row)
    result["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
