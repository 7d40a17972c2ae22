"""Does the reward model agree with the gold answer on fresh samples of the SFT model?

For each held-out task-world question (test split by default: no key of it was in any training data), sample
`--samples` responses from the SFT model at temperature 1 (chat template, stopping at the end-of-turn token), score
each prompt + response with the reward model exactly as PPO will (the generated tokens, left-padded prompt, reward
at the last real token) and with the gold function (`is_correct`). Reports:
    sample_accuracy       share of correct samples (how often the SFT model is right at temperature 1)
    pairwise_agreement    over all (correct, incorrect) sample pairs of the same prompt: share where the reward
                          ranks the correct one higher (ties count half); 0.5 = chance. Pooled over pairs, and
                          `per_prompt_auc`: the same averaged per prompt (each mixed prompt counts once)
    global_auc            ROC AUC of the reward as a classifier of correctness across all samples (mixes prompts)
    best_of_n_accuracy    accuracy when each prompt keeps its highest-reward sample, vs `sample_accuracy` (random
                          pick) and `oracle_accuracy` (a correct sample exists)
    pair_accuracy_by_task with `--pairs N`: accuracy on N held-out task-world preference pairs (same split, no label
                          noise, the training data's kind of mistakes), overall and per task

Usage:
    python benchmarks/reward_agreement.py --reward runs/reward-tiny/checkpoints/last.ckpt \
        --sft runs/sft-tiny/checkpoints/last.ckpt --prompts 200 --samples 8 --out reports/reward_agreement.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lit_llm.checkpoint import load_backbone
from lit_llm.data.preference import PreferenceCollator, PreferenceStats, RecordReader, encode_comparison
from lit_llm.world import Example, is_correct, make_examples, preference_pairs
from lit_llm.generation import generate, left_pad
from lit_llm.rollout import load_reward_model


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", default="runs/reward-tiny/checkpoints/last.ckpt", help="reward-stage checkpoint")
    p.add_argument("--sft", default="runs/sft-tiny/checkpoints/last.ckpt", help="policy that samples responses")
    p.add_argument("--prompts", type=int, default=200, help="held-out questions")
    p.add_argument("--samples", type=int, default=8, help="responses sampled per question")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--max-digits", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64, help="sequences generated/scored per batch")
    p.add_argument("--pairs", type=int, default=0, help="also score this many held-out preference pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return p.parse_args()


def sample_and_score(args: argparse.Namespace, examples: list[Example]) -> list[dict]:
    """One row per sample: prompt index, response text, reward, correct."""
    policy = load_backbone(args.sft)
    scorer, tokenizer, mean, std = load_reward_model(args.reward)
    if tokenizer.to_json() != policy.tokenizer.to_json():
        raise ValueError("the reward model and the SFT model use different tokenizers")
    generator = torch.Generator().manual_seed(args.seed)
    jobs = [(i, ex) for i, ex in enumerate(examples) for _ in range(args.samples)]
    rows = []
    for start in range(0, len(jobs), args.batch_size):
        chunk = jobs[start : start + args.batch_size]
        prompts = [tokenizer.render_chat([{"role": "user", "content": ex.prompt}], add_generation_prompt=True)[0]
                   for _, ex in chunk]
        ids, mask = left_pad(prompts, tokenizer.pad_id)
        out = generate(policy.model, ids, mask, args.max_new_tokens, temperature=args.temperature,
                       eos_id=tokenizer.chat_stop_ids(), pad_id=tokenizer.pad_id, generator=generator)
        with torch.no_grad():  # the reward at the last real token of prompt + response, as PPO scores it
            rewards = scorer.score(out.tokens, out.attention_mask)
        for (i, ex), response, keep, reward in zip(chunk, out.response.tolist(), out.response_mask.tolist(),
                                                   rewards.tolist()):
            text = tokenizer.decode([t for t, k in zip(response, keep) if k])
            rows.append({"prompt": i, "task": ex.task, "response": text, "reward": reward,
                         "normalized": (reward - mean) / std, "correct": is_correct(ex, text)})
    return rows


def pair_agreement(good: list[float], bad: list[float]) -> tuple[float, int]:
    """Sum of wins (ties 0.5) of good over bad rewards, and the number of pairs."""
    wins = sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad)
    return wins, len(good) * len(bad)


def summarize(rows: list[dict], n_prompts: int) -> dict:
    """The agreement metrics of the module docstring."""
    by_prompt = [[r for r in rows if r["prompt"] == i] for i in range(n_prompts)]
    by_prompt = [group for group in by_prompt if group]
    wins = pairs = 0.0
    per_prompt = []
    for group in by_prompt:
        w, n = pair_agreement([r["reward"] for r in group if r["correct"]],
                              [r["reward"] for r in group if not r["correct"]])
        wins, pairs = wins + w, pairs + n
        if n:
            per_prompt.append(w / n)
    global_wins, global_pairs = pair_agreement([r["reward"] for r in rows if r["correct"]],
                                               [r["reward"] for r in rows if not r["correct"]])
    best = [max(group, key=lambda r: r["reward"])["correct"] for group in by_prompt]
    return {
        "prompts": n_prompts, "samples": len(rows),
        "sample_accuracy": sum(r["correct"] for r in rows) / len(rows),
        "mixed_prompts": len(per_prompt), "pairs": int(pairs),
        "pairwise_agreement": wins / pairs if pairs else None,
        "per_prompt_auc": sum(per_prompt) / len(per_prompt) if per_prompt else None,
        "global_auc": global_wins / global_pairs if global_pairs else None,
        "best_of_n_accuracy": sum(best) / n_prompts,
        "oracle_accuracy": sum(any(r["correct"] for r in group) for group in by_prompt) / n_prompts,
    }


def summarize_by_task(rows: list[dict]) -> dict:
    """Sample accuracy and within-prompt agreement per task."""
    out = {}
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        prompts = sorted({r["prompt"] for r in task_rows})
        s = summarize([dict(r, prompt=prompts.index(r["prompt"])) for r in task_rows], len(prompts))
        out[task] = {k: None if s[k] is None else round(s[k], 3) for k in
                     ("sample_accuracy", "pairwise_agreement", "pairs", "best_of_n_accuracy")}
    return out


@torch.no_grad()
def held_out_pairs(args: argparse.Namespace) -> dict:
    """Pair accuracy (ties half) of the reward model on held-out task-world pairs, overall and per task."""
    scorer, tokenizer, _, _ = load_reward_model(args.reward)
    records = preference_pairs(args.pairs, args.split, args.seed, max_digits=args.max_digits)
    reader, stats = RecordReader("pairs", {}, f"tasks/{args.split}"), PreferenceStats()
    items = [encode_comparison(tokenizer, reader.read(r, i), 10_000, "truncate", stats)
             for i, r in enumerate(records)]
    wins: dict[str, list[float]] = {}
    for start in range(0, len(items), args.batch_size):
        batch = PreferenceCollator(tokenizer.pad_id)(items[start : start + args.batch_size])
        rewards = scorer.score(batch["input_ids"], batch["attention_mask"])
        chosen, rejected = rewards[batch["chosen_index"]], rewards[batch["rejected_index"]]
        for record, c, r in zip(records[start : start + args.batch_size], chosen.tolist(), rejected.tolist()):
            wins.setdefault(record["task"], []).append(1.0 if c > r else 0.5 if c == r else 0.0)
    every = [w for task in wins.values() for w in task]
    return {"pairs": len(every), "pair_accuracy": sum(every) / len(every),
            "by_task": {task: round(sum(w) / len(w), 3) for task, w in sorted(wins.items())}}


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    examples = make_examples(args.prompts, split=args.split, seed=args.seed, max_digits=args.max_digits)
    rows = sample_and_score(args, examples)
    result = {"args": {k: str(v) for k, v in vars(args).items()}, **summarize(rows, len(examples))}
    result["by_task"] = summarize_by_task(rows)
    if args.pairs:
        result["held_out_pairs"] = held_out_pairs(args)
    print(json.dumps({k: v for k, v in result.items() if k != "args"}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        examples_out = [dict(r, question=examples[r["prompt"]].prompt) for r in rows[:40]]
        args.out.write_text(json.dumps({**result, "examples": examples_out}, indent=2))


if __name__ == "__main__":
    main()
