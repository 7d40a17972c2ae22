"""Generation throughput benchmark: KV-cached vs uncached greedy decoding on a ~10M-parameter model.

Random weights and random prompts (throughput does not depend on what the model says). Greedy decoding with no
eos, so every row generates exactly --new-tokens tokens. One untimed warm-up call per setting.

Usage:
    python benchmarks/generation.py --out reports/generation_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lit_llm.generation import generate
from lit_llm.model import ModelConfig, Transformer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--d-model", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    return p.parse_args()


def time_generation(model: Transformer, batch_size: int, prompt_len: int, new_tokens: int, use_cache: bool) -> float:
    """Seconds for one greedy generate() call (after one short warm-up call)."""
    g = torch.Generator().manual_seed(batch_size)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=g)
    mask = torch.ones_like(prompt)
    generate(model, prompt, mask, max_new_tokens=4, temperature=0, use_cache=use_cache)  # warm-up
    start = time.perf_counter()
    out = generate(model, prompt, mask, max_new_tokens=new_tokens, temperature=0, use_cache=use_cache)
    elapsed = time.perf_counter() - start
    assert out.response.shape == (batch_size, new_tokens)
    return elapsed


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| batch | cached tok/s | uncached tok/s | speedup | cached s | uncached s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | {r['cached_tok_s']:.1f} | {r['uncached_tok_s']:.1f} | {r['speedup']:.2f}x "
            f"| {r['cached_s']:.2f} | {r['uncached_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head, d_model=args.d_model,
        max_seq_len=args.max_seq_len,
    )  # fmt: skip
    model = Transformer(config).eval()
    load_before = os.getloadavg()[0]  # the machine may be shared: record how busy it was
    rows = []
    for bs in args.batch_sizes:
        cached = time_generation(model, bs, args.prompt_len, args.new_tokens, use_cache=True)
        uncached = time_generation(model, bs, args.prompt_len, args.new_tokens, use_cache=False)
        n = bs * args.new_tokens
        rows.append(
            dict(batch_size=bs, cached_s=cached, uncached_s=uncached, cached_tok_s=n / cached,
                 uncached_tok_s=n / uncached, speedup=uncached / cached)
        )  # fmt: skip
    env = dict(
        torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
        threads=torch.get_num_threads(), params=model.num_params(), load_avg_1min=[load_before, os.getloadavg()[0]],
    )  # fmt: skip
    print(f"model: {config}\nparams: {model.num_params():,}  env: {env}\n")
    print(markdown_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = dict(args={k: str(v) for k, v in vars(args).items()}, config=config.to_dict(), env=env, results=rows)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
