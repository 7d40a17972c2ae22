"""The built-in task world: the default dataset of every stage, generated offline and deterministically from a seed.

Tasks (see `TASKS`; definitions in `_task_defs.py`): addition, subtraction (never negative), comparison (which of two
numbers is larger), reversing a word, sorting the letters of a word, sorting three numbers, counting a letter in a word
and unit conversion, each phrased through five templates. `max_digits` is the difficulty knob: numbers range over
[0, 10**max_digits) (conversion quantities over [1, 20] by default). Answers are short: a number, a word or "3, 7, 12".

Splits. Every example has a key "task:operand,operand" (e.g. "add:12,5"); `split_of` assigns each key to
train/val/test (80/10/10) by SHA-256 of the key, so the split of a key never depends on the seed, on max_digits or on
the generator, and every generator for a split only emits keys of that split (held-out prompts never reach training,
the pretraining corpus included).

Determinism: all randomness comes from `random.Random` seeded with a string built from (purpose, seed, split,
max_digits); str seeds are hashed with SHA-512 by Python, so output is identical across processes. No output depends
on set iteration order or on Python's `hash`.

Answer sentences are "42" or "The answer is 42."; `extract_answer` parses both (and more) back.

Ranking rule (`wrong_answers`, `ranked_lists`): the correct answer first, then wrong answers ordered by increasing
distance to the gold answer (`answer_distance`: absolute difference for numbers, elementwise L1 for number lists,
Levenshtein distance for words), i.e. the closer a mistake, the more plausible and the higher it ranks. Distances
within a list are distinct, so the order is strict.

Layout: task definitions (word list, units, templates, solvers, typical mistakes) live in `_task_defs.py`, the
corpus building blocks (clean documents, near-duplicates, junk) in `_task_corpus.py`; this module holds the public API.

Deliberate simplifications: scored responses carry the binary gold reward (1.0/0.0), not a graded score; junk
documents are drawn from small fixed pools, so two junk documents may coincide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from lit_llm.data import _task_corpus as _corpus
from lit_llm.data._task_corpus import shingle_jaccard
from lit_llm.data._task_defs import ANSWER_FORMATS, TASK_DEFS, make_key, parse_key, say

__all__ = [
    "ANSWER_FORMATS", "CORPUS_KINDS", "SPLITS", "TASKS", "Corpus", "Example", "alpaca_prompt", "answer_distance",
    "extract_answer", "gold_accuracy", "gold_reward", "is_correct", "make_examples", "make_key", "ppo_prompts",
    "preference_pairs", "pretrain_corpus", "ranked_lists", "read_jsonl", "scored_responses", "sft_records",
    "shingle_jaccard", "split_of", "write_jsonl", "wrong_answers",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
TASKS: tuple[str, ...] = tuple(TASK_DEFS)

_SPLIT_PERMILLE = (("train", 800), ("val", 900), ("test", 1000))  # cumulative upper bounds of sha256 % 1000
_ENUMERATE_LIMIT = 50_000  # key spaces up to this size are enumerated; larger ones are rejection-sampled
_MAX_TRIES = 10_000  # consecutive rejections after which a large key space counts as exhausted


@dataclass(frozen=True)
class Example:
    """One task instance.

    Args:
        task: task name, one of `TASKS`.
        key: stable identity "task:operands" (template-independent); decides the split.
        prompt: the question; a "\\n" separates an Alpaca instruction from its input.
        answer: the gold answer (short, lowercase).
    """

    task: str
    key: str
    prompt: str
    answer: str


def split_of(key: str) -> str:
    """Split ("train", "val" or "test") of a key, by a stable SHA-256 hash (80/10/10)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 1000
    return next(name for name, bound in _SPLIT_PERMILLE if bucket < bound)


def _rng(purpose: str, seed: int, split: str, max_digits: int = 0) -> random.Random:
    return random.Random(f"lit_llm.tasks|{purpose}|{seed}|{split}|{max_digits}")


@lru_cache(maxsize=None)
def _split_operands(task: str, split: str, max_digits: int) -> tuple[tuple, ...]:
    """All operand tuples of a (small) task key space that fall into `split`, in enumeration order."""
    t = TASK_DEFS[task]
    ops = (t.operands(i, max_digits) for i in range(t.size(max_digits)))
    return tuple(o for o in ops if split_of(make_key(task, o)) == split)


class _KeyPool:
    """Draws operands of one task inside one split, without repeats until the pool is exhausted."""

    def __init__(self, task: str, split: str, max_digits: int, rng: random.Random):
        self.task, self.split, self.max_digits, self.rng = task, split, max_digits, rng
        self.size = TASK_DEFS[task].size(max_digits)
        self.reset()

    def reset(self) -> None:
        """Start a new cycle: every key of the split becomes available again."""
        if self.size <= _ENUMERATE_LIMIT:
            self.queue = list(_split_operands(self.task, self.split, self.max_digits))
            self.rng.shuffle(self.queue)
        self.seen: set[str] = set()  # membership only (large spaces); never iterated

    def draw(self) -> tuple | None:
        """Next operands, or None when the pool is exhausted."""
        if self.size <= _ENUMERATE_LIMIT:
            return self.queue.pop() if self.queue else None
        t = TASK_DEFS[self.task]
        for _ in range(_MAX_TRIES):
            ops = t.operands(self.rng.randrange(self.size), self.max_digits)
            key = make_key(self.task, ops)
            if key not in self.seen and split_of(key) == self.split:
                self.seen.add(key)
                return ops
        return None


def _check_args(split: str, tasks: Sequence[str] | None, max_digits: int) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    tasks = TASKS if tasks is None else tuple(tasks)
    unknown = [t for t in tasks if t not in TASK_DEFS]
    if unknown or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks!r}")
    if max_digits < 1:
        raise ValueError(f"max_digits must be >= 1, got {max_digits}")
    return tasks


def _next_operands(pool: _KeyPool, unique: bool) -> tuple | None:
    """Next operands of a pool; with unique=False a used-up pool restarts at once (its keys repeat)."""
    ops = pool.draw()
    if ops is None and not unique:
        pool.reset()
        ops = pool.draw()
    return ops


def _example_stream(split: str, seed: int, tasks: Sequence[str] | None, max_digits: int, purpose: str,
                    unique: bool = True) -> Iterator[Example]:
    """Endless stream of examples: live tasks in shuffled rounds; see `make_examples` for `unique`."""
    tasks = _check_args(split, tasks, max_digits)  # outside the generator, so bad arguments raise at once
    rng = _rng(purpose, seed, split, max_digits)
    pools = [_KeyPool(t, split, max_digits, rng) for t in tasks]

    def stream() -> Iterator[Example]:
        live, produced = list(pools), False
        while True:
            order = list(live)
            rng.shuffle(order)
            for pool in order:
                ops = _next_operands(pool, unique)
                if ops is None:  # used up (unique=True) or no key of this task in the split: drop the task
                    live.remove(pool)
                    continue
                produced = True
                t = TASK_DEFS[pool.task]
                prompt = rng.choice(t.templates).format(**t.fields(ops))
                yield Example(pool.task, make_key(pool.task, ops), prompt, t.solve(ops))
            if not live:  # every task used up: a new cycle, keys repeat from here on
                if not produced:
                    raise ValueError(f"split {split!r} holds no key of the tasks {tasks}")
                for pool in pools:
                    pool.reset()
                live, produced = list(pools), False

    return stream()


def make_examples(n: int, split: str = "train", seed: int = 0, tasks: Sequence[str] | None = None,
                  max_digits: int = 2, unique: bool = True) -> list[Example]:
    """Sample task examples of one split.

    Tasks come in shuffled rounds, so their counts differ by at most one while every task has keys left. The word
    tasks are small (~120 train and ~15 val/test keys each; conversion ~160/~20, counting ~740/~90), so what happens
    when a task's keys in the split are used up depends on `unique`:

    - unique=True (default): keys are unique within the call as long as the split has enough keys in all: a used-up
      task drops out of the rounds (the mix shifts towards the large arithmetic tasks); only when every task is used
      up does a new cycle start, from which keys repeat (with fresh template draws).
    - unique=False: tasks stay balanced; a used-up task starts a new shuffled cycle of its keys (keys repeat).

    The output for n is a prefix of that for n+1.

    Args:
        n: number of examples.
        split: "train", "val" or "test"; only keys of this split are emitted.
        seed: random seed; same seed -> identical output.
        tasks: subset of `TASKS` to draw from (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
        unique: prefer unique keys over task balance (see above).
    """
    return list(islice(_example_stream(split, seed, tasks, max_digits, "examples", unique), n))


# ----------------------------------------------------------------------------------------------- gold scoring
def _normalize(text: str) -> str:
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
    return _normalize(line)


def _gold(example: Example | Mapping[str, Any]) -> str:
    return example.answer if isinstance(example, Example) else str(example["answer"])


def is_correct(example: Example | Mapping[str, Any], response: str) -> bool:
    """Whether a response states the gold answer (case-insensitive; see `extract_answer`).

    Args:
        example: an `Example` or any record with an "answer" field (PPO prompts, SFT records...).
        response: generated text.
    """
    return extract_answer(response) == _normalize(_gold(example))


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
    parts = _normalize(text).split(", ")
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
    return _levenshtein(_normalize(gold), _normalize(other))


def _plausible_wrong(example: Example, rng: random.Random) -> list[str]:
    """Typical mistakes for the example (off-by-one, swapped digits, wrong comparison, misspelling...), all wrong."""
    gold, out = _normalize(example.answer), []
    for cand in TASK_DEFS[example.task].mistakes(parse_key(example.key), example.answer, rng):
        if cand and _normalize(cand) != gold and cand not in out:
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
    cands = _plausible_wrong(example, rng)
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


# ----------------------------------------------------------------------------------------------- stage records
def _record_examples(n: int, split: str, seed: int, tasks: Sequence[str] | None, max_digits: int, purpose: str,
                     unique: bool) -> tuple[list[Example], random.Random]:
    """Examples for one generator (its own stream, so e.g. SFT and PPO prompts differ) plus a formatting rng."""
    examples = list(islice(_example_stream(split, seed, tasks, max_digits, purpose, unique), n))
    return examples, _rng(purpose + "/format", seed, split, max_digits)


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
        wrong = _plausible_wrong(ex, rng) or wrong_answers(ex, 1, rng)
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
        wrong = _plausible_wrong(ex, rng) or wrong_answers(ex, 1, rng)
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


# ------------------------------------------------------------------------------------------- pretraining corpus
CORPUS_KINDS: tuple[str, ...] = ("clean", "exact_dup", "near_dup", "junk")


@dataclass
class Corpus:
    """A pretraining corpus with the labels of what was injected.

    Args:
        docs: the documents.
        kinds: per document, one of `CORPUS_KINDS`.
        sources: per document, for "exact_dup"/"near_dup" the index (into docs) of the clean document it copies,
            else None.
        junk_lines: per document, the number of boilerplate lines injected into an otherwise good document
            (copied along by its duplicates; 0 for junk documents, which are junk as a whole).
    """

    docs: list[str]
    kinds: list[str]
    sources: list[int | None]
    junk_lines: list[int]

    def __len__(self) -> int:
        return len(self.docs)

    def indices(self, kind: str) -> list[int]:
        """Indices of the documents of one kind."""
        return [i for i, k in enumerate(self.kinds) if k == kind]


def _corpus_counts(n_docs: int, rates: Sequence[float]) -> list[int]:
    """[n_clean, n_dup, n_near, n_junk] for the given [dup, near_dup, junk] rates (rounded)."""
    if any(not 0.0 <= r <= 1.0 for r in rates):
        raise ValueError(f"rates must be in [0, 1], got {rates}")
    counts = [round(n_docs * r) for r in rates]
    n_clean = n_docs - sum(counts)
    if n_clean < 0 or (n_clean == 0 and counts[0] + counts[1] > 0):
        raise ValueError(f"rates {rates} leave no clean documents to duplicate")
    return [n_clean, *counts]


def pretrain_corpus(n_docs: int, seed: int = 0, dup_rate: float = 0.1, near_dup_rate: float = 0.1,
                    junk_rate: float = 0.1, split: str = "train", junk_line_rate: float = 0.05,
                    tasks: Sequence[str] | None = None, max_digits: int = 2) -> Corpus:
    """Pretraining documents built from worked examples of one split, with injected duplicates and junk.

    Exactly round(n_docs * rate) documents of each injected kind (the rest clean), in shuffled order. Clean
    documents hold >= 3 worked examples (Q/A, chat-like, prose explanation) and >= 40 words; exact duplicates copy a
    clean document; near-duplicates edit a few words of one (word 5-shingle Jaccard to it in [0.7, 0.9]); junk
    documents are symbol soup, repeated boilerplate or very short pages. Tasks are balanced: keys of a task repeat
    once its keys in the split are used up (see `make_examples(unique=False)`).

    Args:
        n_docs: total number of documents.
        seed: random seed.
        dup_rate: share of exact duplicate documents.
        near_dup_rate: share of near-duplicate documents.
        junk_rate: share of junk documents.
        split: split whose keys the examples use ("train" keeps held-out keys out of pretraining).
        junk_line_rate: probability that a clean document gets 1-2 boilerplate lines (see `Corpus.junk_lines`).
        tasks: subset of `TASKS` (default: all).
        max_digits: difficulty knob, numbers range over [0, 10**max_digits).
    """
    n_clean, n_dup, n_near, n_junk = _corpus_counts(n_docs, (dup_rate, near_dup_rate, junk_rate))
    rng = _rng("corpus", seed, split, max_digits)
    stream = _example_stream(split, seed, tasks, max_digits, "corpus", unique=False)  # balanced, keys repeat
    items = []  # (doc, kind, index of the source among the clean docs, junk lines); clean docs come first
    for _ in range(n_clean):
        doc, lines = _corpus.clean_doc(stream, rng), 0
        if rng.random() < junk_line_rate:
            doc, lines = _corpus.add_junk_lines(doc, rng)
        items.append((doc, "clean", None, lines))
    for _ in range(n_dup):
        s = rng.randrange(n_clean)
        items.append((items[s][0], "exact_dup", s, items[s][3]))
    for _ in range(n_near):
        s = rng.randrange(n_clean)
        items.append((_corpus.near_duplicate(items[s][0], rng), "near_dup", s, items[s][3]))
    items += [(_corpus.junk_doc(rng), "junk", None, 0) for _ in range(n_junk)]
    order = list(range(len(items)))
    rng.shuffle(order)
    new_index = {old: new for new, old in enumerate(order)}
    return Corpus(docs=[items[o][0] for o in order], kinds=[items[o][1] for o in order],
                  sources=[None if items[o][2] is None else new_index[items[o][2]] for o in order],
                  junk_lines=[items[o][3] for o in order])


# ------------------------------------------------------------------------------------------------------- files
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
