"""Gold checking: the answer in a response, whether it is the gold answer, and how far a wrong answer is from it.

The verifier of the task world: `gold_reward` is the reward of RL with verifiable rewards (PPO's `reward_from:
gold`, rejection sampling against correctness) and `is_correct` the gold evaluation's verdict.
"""

from __future__ import annotations

import random
import re
import string
from typing import Any, Mapping, Sequence

from lit_llm.world.defs import TASK_DEFS, parse_key
from lit_llm.world.examples import Example

def normalize(text: str) -> str:
    """Lowercase, trim quotes/whitespace/trailing periods, drop thousands separators, canonical ', ' in lists."""
    s = re.sub(r"^[\s\"'`]+|[\s\"'`.!]+$", "", text.lower())
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+", s):
        s = s.replace(",", "")
    return re.sub(r"\s+", " ", re.sub(r"\s*,\s*", ", ", s))


def extract_answer(response: str) -> str:
    """The (normalized, lowercase) answer in a model response.

    Lenient: looks at the first non-empty line only, takes what follows "answer is"/"answer:" when present (or a
    leading "A:"), strips whitespace, quotes and trailing periods. "The answer is 42." -> "42", "Elppa" -> "elppa".

    Args:
        response: generated text.
    """
    line = next((ln for ln in response.splitlines() if ln.strip()), "")
    m = re.search(r"answer\s*(?:is\s*:?|:)\s*(.*)", line, flags=re.IGNORECASE)
    line = m.group(1) if m else re.sub(r"^\s*a\s*:\s*", "", line, flags=re.IGNORECASE)
    return normalize(line)


def _gold(example: Example | Mapping[str, Any]) -> str:
    return example.answer if isinstance(example, Example) else str(example["answer"])


def is_correct(example: Example | Mapping[str, Any], response: str) -> bool:
    """Whether a response states the gold answer (case-insensitive; see `extract_answer`).

    Args:
        example: an `Example` or any record with an "answer" field (PPO prompts, SFT records...).
        response: generated text.
    """
    return extract_answer(response) == normalize(_gold(example))


def gold_reward(example: Example | Mapping[str, Any], response: str) -> float:
    """1.0 if `is_correct(example, response)` else 0.0 (the PPO reward function)."""
    return 1.0 if is_correct(example, response) else 0.0


def gold_accuracy(examples: Sequence[Example | Mapping[str, Any]], responses: Sequence[str]) -> float:
    """Fraction of correct responses (0.0 for no examples).

    Args:
        examples: examples or records with an "answer" field.
        responses: one response per example.
    """
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
    return sum(map(gold_reward, examples, responses)) / len(examples) if examples else 0.0


# ----------------------------------------------------------------------------------------- wrong answers
def _int_list(text: str) -> list[int] | None:
    parts = normalize(text).split(", ")
    return [int(p) for p in parts] if all(p.isdigit() for p in parts) else None


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def answer_distance(gold: str, other: str) -> int:
    """Distance between two answers: |a-b| for numbers, elementwise L1 for equal-length number lists, else
    Levenshtein distance of the normalized strings. 0 iff the answers are equal."""
    a, b = _int_list(gold), _int_list(other)
    if a is not None and b is not None and len(a) == len(b):
        return sum(abs(x - y) for x, y in zip(a, b))
    return _levenshtein(normalize(gold), normalize(other))


def plausible_wrong(example: Example, rng: random.Random) -> list[str]:
    """Typical mistakes for the example (off-by-one, swapped digits, wrong comparison, misspelling...), all wrong."""
    gold, out = normalize(example.answer), []
    for cand in TASK_DEFS[example.task].mistakes(parse_key(example.key), example.answer, rng):
        if cand and normalize(cand) != gold and cand not in out:
            out.append(cand)
    return out


def _at_distance(gold: str, d: int, rng: random.Random) -> str:
    """A wrong answer at exactly distance d: bump the (last) number by d, or append d random letters."""
    nums = _int_list(gold)
    if nums is not None:
        return ", ".join(str(x) for x in nums[:-1] + [nums[-1] + d])
    return gold + "".join(rng.choice(string.ascii_lowercase) for _ in range(d))


def wrong_answers(example: Example, k: int, rng: random.Random) -> list[str]:
    """k distinct wrong answers ranked most plausible first (strictly increasing `answer_distance` to the gold).

    Typical mistakes are preferred (picked in random order, one per distance); answers at unused small distances
    fill up when there are not enough of them.

    Args:
        example: the example.
        k: number of wrong answers.
        rng: source of randomness.
    """
    cands = plausible_wrong(example, rng)
    rng.shuffle(cands)
    by_dist: dict[int, str] = {}
    for cand in cands:
        by_dist.setdefault(answer_distance(example.answer, cand), cand)
        if len(by_dist) == k:
            break
    d = 1
    while len(by_dist) < k:
        if d not in by_dist:
            by_dist[d] = _at_distance(example.answer, d, rng)
        d += 1
    return [by_dist[d] for d in sorted(by_dist)]


