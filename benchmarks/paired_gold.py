"""Paired gold-accuracy comparison of checkpoints on the same task-world questions.

    python benchmarks/paired_gold.py --split val --n 512 runs/sft-tiny/checkpoints/last.ckpt runs/dpo-tiny/...

The first checkpoint is the baseline. For each checkpoint: greedy gold accuracy (chat template, as the SFT and DPO
stages evaluate), and the paired difference to the baseline — mean and standard error of per-question
correct(model) − correct(baseline), with questions won and lost — which is far tighter than comparing two
accuracies as if they were independent.
"""

import argparse
import math

from lit_llm.checkpoint import load_backbone
from lit_llm.world import make_examples
from lit_llm.evaluation import gold_eval


def correctness(path: str, examples: list, max_new_tokens: int) -> list[float]:
    loaded = load_backbone(path)
    tokenizer = loaded.tokenizer

    def render(example) -> list[int]:
        return tokenizer.render_chat([{"role": "user", "content": example.prompt}], add_generation_prompt=True)[0]

    rows = gold_eval(loaded.model, tokenizer, examples, render, max_new_tokens,
                     stop_ids=tokenizer.chat_stop_ids(), batch_size=64)
    return [float(row["correct"]) for row in rows]


def paired(model: list[float], base: list[float]) -> tuple[float, float, int, int]:
    diffs = [a - b for a, b in zip(model, base)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / max(1, len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs)), sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="baseline first")
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--n", type=int, default=512, help="questions (make_examples(n, split, seed=0))")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    args = parser.parse_args()
    examples = make_examples(args.n, split=args.split, seed=0)
    results = {path: correctness(path, examples, args.max_new_tokens) for path in args.checkpoints}
    base = results[args.checkpoints[0]]
    print(f"| checkpoint | {args.split} gold acc. ({args.n}) | paired diff. vs first (± s.e.) | won / lost |")
    print("|---|---|---|---|")
    for path, correct in results.items():
        mean, se, won, lost = paired(correct, base)
        print(f"| {path} | {sum(correct) / len(correct):.3f} | {mean:+.3f} ± {se:.3f} | {won} / {lost} |")
