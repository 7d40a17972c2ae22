"""On-policy "edited" preference pairs from the task world, for reward-model experiments (reports/ppo.md).

Samples `--n` responses per task-world prompt from a policy (chat template, temperature 1, KV cache) and, for every
distinct wrong sample, writes the pair {prompt, chosen: the same answer sentence stating the gold answer, rejected:
the sample}, like Llama 3's edited responses: the two differ only in the answer, so the phrasing carries no signal.

    python benchmarks/edited_pairs.py --policy runs/sft-tiny/checkpoints/last.ckpt --prompts 6000 --n 2 \
        --seed 1 --out runs/rm-edited/pairs.jsonl
"""

import argparse
import random
import re

from lit_llm.checkpoint import load_backbone
from lit_llm.data.tasks import ANSWER_FORMATS, is_correct, ppo_prompts, write_jsonl
from lit_llm.rejection import gold_scorer, sample_and_score


def edited(response: str, gold: str, rng: random.Random) -> str:
    """The response's answer sentence with the gold answer in it (a random format when it has none)."""
    text = response.strip()
    if re.fullmatch(r"The answer is .*\.", text):
        return f"The answer is {gold}."
    if text and "\n" not in text and not text.lower().startswith("the answer"):
        return gold
    return rng.choice(ANSWER_FORMATS).format(gold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--prompts", type=int, default=6000)
    parser.add_argument("--n", type=int, default=2, help="samples per prompt")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    loaded = load_backbone(args.policy)
    records = ppo_prompts(args.prompts, "train", args.seed)
    texts, scores = sample_and_score(loaded.model.eval(), loaded.tokenizer, records, args.n, gold_scorer,
                                     max_new_tokens=16, temperature=1.0, batch_size=64, seed=args.seed)
    rng, pairs = random.Random(args.seed), []
    for record, samples in zip(records, texts):
        for sample in dict.fromkeys(samples):
            if not is_correct(record, sample):
                pairs.append({"prompt": record["prompt"], "chosen": edited(sample, record["answer"], rng),
                              "rejected": sample, "task": record["task"], "key": record["key"],
                              "answer": record["answer"]})
    write_jsonl(pairs, args.out)
    print(f"{len(pairs)} pairs from {len(records)} prompts (sample accuracy {scores.mean().item():.3f}) -> {args.out}")


if __name__ == "__main__":
    main()
