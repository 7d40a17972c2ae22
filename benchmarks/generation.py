"""Generation throughput benchmark: KV-cached vs uncached greedy decoding on a ~10M-parameter model.

Random weights and random prompts (throughput does not depend on what the model says). Greedy decoding with no
eos, so every row generates exactly --new-tokens tokens. One untimed warm-up call per setting.

The measurement is `lit_llm.bench.generation_rows`, the generation section of `lit-llm bench`; this script keeps
the command of reports/generation.md and its model-shape options.

Usage:
    python benchmarks/generation.py --out reports/generation_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from lit_llm.bench import generation_rows, generation_table
from lit_llm.model import ModelConfig, Transformer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    rows = generation_rows(model, args.batch_sizes, args.prompt_len, args.new_tokens)
    env = dict(
        torch=torch.__version__, python=platform.python_version(), machine=platform.machine(),
        threads=torch.get_num_threads(), params=model.num_params(), load_avg_1min=[load_before, os.getloadavg()[0]],
    )  # fmt: skip
    print(f"model: {config}\nparams: {model.num_params():,}  env: {env}\n")
    print(generation_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = dict(args={k: str(v) for k, v in vars(args).items()}, config=config.to_dict(), env=env, results=rows)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
