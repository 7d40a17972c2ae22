"""Records of every stage built from task examples: SFT (Alpaca), preference pairs, ranked lists, scored responses
and PPO prompts, each carrying its `task`, `key` and gold `answer`; and JSON-lines files of them."""

from __future__ import annotations

import dataclasses
import json
import random
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lit_llm.world.defs import ANSWER_FORMATS, say
from lit_llm.world.examples import Example, example_stream, rng_for
from lit_llm.world.gold import gold_reward, plausible_wrong, wrong_answers

def _record_examples(n: int, split: str, seed: int, tasks: Sequence[str] | None, max_digits: int, purpose: str,
                     unique: bool) -> tuple[list[Example], random.Random]:
    """Examples for one generator (its own stream, so e.g. SFT and PPO prompts differ) plus a formatting rng."""
    examples = list(islice(example_stream(split, seed, tasks, max_digits, purpose, unique), n))
    return examples, rng_for(purpose + "/format", seed, split, max_digits)


def _ids(ex: Example) -> dict[str, str]:
    return {"task": ex.task, "key": ex.key, "answer": ex.answer}


def alpaca_prompt(instruction: str, input: str = "") -> str:
    """The prompt an SFT record stands for: instruction, then "\\n" and the input when there is one.

    Equal to `Example.prompt` of the example the record was made from (PPO prompts use the same strings).
    """
    return f"{instruction}\n{input}" if input else instruction


def sft_records(n: int, split: str = "train", seed: int = 0, tasks: Sequence[str] | None = None,
                max_digits: int = 2, unique: bool = True) -> list[dict[str, str]]:
    """Alpaca-format SFT records {instruction, input, output, task, key, answer}.

    The prompt's first line is the instruction, the rest (if any) the input; output is an answer sentence from
    `ANSWER_FORMATS` ("42" or "The answer is 42.") that `extract_answer` parses back to the gold answer.

    Args:
        n: number of records.
        split: "train", "val" or "test".
        seed: random seed.
        tasks: subset of `TASKS` (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
        unique: prefer unique keys over task balance (see `make_examples`).
    """
    examples, rng = _record_examples(n, split, seed, tasks, max_digits, "sft", unique)
    records = []
    for ex in examples:
        instruction, _, inp = ex.prompt.partition("\n")
        records.append({"instruction": instruction, "input": inp, "output": say(ex.answer, rng), **_ids(ex)})
    return records


def preference_pairs(n: int, split: str = "train", seed: int = 0, label_noise: float = 0.0,
                     tasks: Sequence[str] | None = None, max_digits: int = 2,
                     unique: bool = True) -> list[dict[str, Any]]:
    """Preference pairs {prompt, chosen, rejected, label_flipped, task, key, answer}.

    chosen states the gold answer, rejected a plausible mistake (off-by-one, swapped digits, wrong comparison,
    misspelled reversal...), both in the same answer sentence format. With probability `label_noise` the two are
    swapped and `label_flipped` is True.

    Args:
        n: number of pairs.
        split: "train", "val" or "test".
        seed: random seed.
        label_noise: probability of swapping chosen and rejected, in [0, 1].
        tasks: subset of `TASKS` (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
        unique: prefer unique keys over task balance (see `make_examples`).
    """
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    examples, rng = _record_examples(n, split, seed, tasks, max_digits, "pairs", unique)
    records = []
    for ex in examples:
        fmt = rng.choice(ANSWER_FORMATS)
        wrong = plausible_wrong(ex, rng) or wrong_answers(ex, 1, rng)
        chosen, rejected = fmt.format(ex.answer), fmt.format(rng.choice(wrong))
        flipped = rng.random() < label_noise
        if flipped:
            chosen, rejected = rejected, chosen
        records.append({"prompt": ex.prompt, "chosen": chosen, "rejected": rejected, "label_flipped": flipped,
                        **_ids(ex)})
    return records


def ranked_lists(n: int, split: str = "train", seed: int = 0, k: int = 4, tasks: Sequence[str] | None = None,
                 max_digits: int = 2, unique: bool = True) -> list[dict[str, Any]]:
    """Ranked responses {prompt, responses, task, key, answer}, `responses` ordered best -> worst.

    responses[0] states the gold answer; the k-1 others are wrong answers ranked by the module's ranking rule
    (strictly increasing `answer_distance` to the gold answer). All share one answer sentence format.

    Args:
        n: number of prompts.
        split: "train", "val" or "test".
        seed: random seed.
        k: responses per prompt (>= 2).
        tasks: subset of `TASKS` (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
        unique: prefer unique keys over task balance (see `make_examples`).
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    examples, rng = _record_examples(n, split, seed, tasks, max_digits, "ranked", unique)
    records = []
    for ex in examples:
        fmt = rng.choice(ANSWER_FORMATS)
        answers = [ex.answer] + wrong_answers(ex, k - 1, rng)
        records.append({"prompt": ex.prompt, "responses": [fmt.format(a) for a in answers], **_ids(ex)})
    return records


def scored_responses(n: int, split: str = "train", seed: int = 0, tasks: Sequence[str] | None = None,
                     max_digits: int = 2, unique: bool = True) -> list[dict[str, Any]]:
    """Scored responses {prompt, response, score, task, key, answer}; half correct (score 1.0), half a plausible
    mistake (score 0.0), the score being `gold_reward`.

    Args:
        n: number of records.
        split: "train", "val" or "test".
        seed: random seed.
        tasks: subset of `TASKS` (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
        unique: prefer unique keys over task balance (see `make_examples`).
    """
    examples, rng = _record_examples(n, split, seed, tasks, max_digits, "scored", unique)
    records = []
    for ex in examples:
        wrong = plausible_wrong(ex, rng) or wrong_answers(ex, 1, rng)
        response = say(ex.answer if rng.random() < 0.5 else rng.choice(wrong), rng)
        records.append({"prompt": ex.prompt, "response": response, "score": gold_reward(ex, response), **_ids(ex)})
    return records


def ppo_prompts(n: int, split: str = "train", seed: int = 0, tasks: Sequence[str] | None = None,
                max_digits: int = 2, unique: bool = True) -> list[dict[str, str]]:
    """PPO prompts {prompt, answer, task, key}; score rollouts with `gold_reward(record, response)`.

    Args:
        n: number of prompts.
        split: "train", "val" or "test".
        seed: random seed.
        tasks: subset of `TASKS` (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
        unique: prefer unique keys over task balance (see `make_examples`).
    """
    examples, _ = _record_examples(n, split, seed, tasks, max_digits, "ppo", unique)
    return [{"prompt": ex.prompt, "answer": ex.answer, "task": ex.task, "key": ex.key} for ex in examples]


def write_jsonl(records: Iterable[Mapping[str, Any] | Example], path: str | Path) -> int:
    """Write records (dicts or dataclasses such as `Example`) as JSON lines; creates parent folders.

    Args:
        records: the records.
        path: output file.

    Returns:
        The number of records written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for rec in records:
            row = dataclasses.asdict(rec) if dataclasses.is_dataclass(rec) else dict(rec)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by `write_jsonl`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
