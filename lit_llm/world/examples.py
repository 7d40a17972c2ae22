"""Task examples of one split: the key space of every task, the train/val/test split of each key, and the seeded
stream of examples every record generator draws from (see the package docstring for the guarantees)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from typing import Iterator, Sequence

from lit_llm.world.defs import TASK_DEFS, make_key

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


def rng_for(purpose: str, seed: int, split: str, max_digits: int = 0) -> random.Random:
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


def example_stream(split: str, seed: int, tasks: Sequence[str] | None, max_digits: int, purpose: str,
                    unique: bool = True) -> Iterator[Example]:
    """Endless stream of examples: live tasks in shuffled rounds; see `make_examples` for `unique`."""
    tasks = _check_args(split, tasks, max_digits)  # outside the generator, so bad arguments raise at once
    rng = rng_for(purpose, seed, split, max_digits)
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
    return list(islice(example_stream(split, seed, tasks, max_digits, "examples", unique), n))


