"""Definitions of the built-in tasks: word list, units, prompt templates, solvers and typical mistakes.

Part of the task world `lit_llm.world` (its public API is re-exported there). Each task is a `TaskDef` whose key space is
indexed by an integer, so the sampler can either enumerate a small space or draw random indices from a huge one with
the same code.

Deliberate simplifications: subtraction never goes negative (a >= b); "sort" comes in two flavours
(`sort_letters`, `sort_numbers`); counting asks mostly about letters that occur in the word (plus two absent letters
per word, so ~30% of the answers are 0); unit conversion multiplies a small quantity by a fixed factor.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from math import isqrt
from typing import Callable, Iterable

# ~150 short common English words (lowercase, 3-6 letters, no palindromes); written for this module.
WORDS: tuple[str, ...] = tuple(
    """
    cat dog sun moon star tree book fish bird cake milk rain snow wind fire ship door road hand foot
    home king lamp desk rock sand salt corn rice seed leaf rose frog duck bear wolf lion goat horse mouse
    apple grape lemon melon peach plum bread honey sugar water ocean river lake hill field stone glass
    paper chair table clock phone radio music piano drum song dance smile laugh dream sleep night light
    green black white brown pink blue gold park farm town city shop bank train plane boat truck bike
    coat shoe sock hat ring bell key box cup pen map egg nest web jam tea pie bag bus car van fox owl
    ant bee cow pig hen rat happy quick slow warm cold soft loud calm brave kind jump walk run swim read
    write sing play cook open baby girl friend house garden window money school story word letter number
    """.split()
)

# (code, singular source unit, plural source unit, plural target unit, factor)
UNITS: tuple[tuple[str, str, str, str, int], ...] = (
    ("km_m", "kilometer", "kilometers", "meters", 1000),
    ("m_cm", "meter", "meters", "centimeters", 100),
    ("kg_g", "kilogram", "kilograms", "grams", 1000),
    ("l_ml", "liter", "liters", "milliliters", 1000),
    ("h_min", "hour", "hours", "minutes", 60),
    ("min_s", "minute", "minutes", "seconds", 60),
    ("d_h", "day", "days", "hours", 24),
    ("wk_d", "week", "weeks", "days", 7),
    ("usd_c", "dollar", "dollars", "cents", 100),
    ("ft_in", "foot", "feet", "inches", 12),
)
_UNIT_BY_CODE = {u[0]: u for u in UNITS}

# Answer sentences used by SFT outputs, preference responses and chat-like corpus segments.
ANSWER_FORMATS: tuple[str, ...] = ("{}", "The answer is {}.")

# Letters asked about although absent from the word (the first two not in the word are used).
_ABSENT_LETTERS = "zqxjkvwy"


def _count_keys() -> tuple[tuple[str, str], ...]:
    """(word, letter) pairs: every distinct letter of the word in reading order, then two absent letters."""
    keys = []
    for w in WORDS:
        letters = list(dict.fromkeys(w)) + [c for c in _ABSENT_LETTERS if c not in w][:2]
        keys.extend((w, c) for c in letters)
    return tuple(keys)


COUNT_KEYS = _count_keys()


@dataclass(frozen=True)
class TaskDef:
    """One task family.

    Args:
        name: task name (also the key prefix).
        templates: prompt phrasings; a "\\n" separates an Alpaca instruction from its input.
        explanations: prose sentences that state the answer (used by the pretraining corpus), formatted with
            `fields(ops)` plus `ans`.
        size: max_digits -> number of keys of the task.
        operands: (index in [0, size), max_digits) -> operand tuple.
        solve: operands -> gold answer string.
        fields: operands -> template fields.
        mistakes: (operands, gold, rng) -> plausible wrong answers (may contain the gold or repeats; callers filter).
    """

    name: str
    templates: tuple[str, ...]
    explanations: tuple[str, ...]
    size: Callable[[int], int]
    operands: Callable[[int, int], tuple]
    solve: Callable[[tuple], str]
    fields: Callable[[tuple], dict]
    mistakes: Callable[[tuple, str, random.Random], list[str]]


def say(answer: str, rng: random.Random) -> str:
    """The answer phrased as a response, in one of `ANSWER_FORMATS`."""
    return rng.choice(ANSWER_FORMATS).format(answer)


def make_key(task: str, operands: tuple | list) -> str:
    """Key of a task instance, e.g. make_key("add", (12, 5)) == "add:12,5"."""
    return f"{task}:{','.join(str(o) for o in operands)}"


def parse_key(key: str) -> tuple:
    """Operands of a key, the inverse of `make_key` (operands are digits or lowercase words/codes, no ',')."""
    return tuple(int(p) if p.isdigit() else p for p in key.split(":", 1)[1].split(","))


def _n(max_digits: int) -> int:
    """Numbers of a task range over [0, 10**max_digits)."""
    return 10**max_digits


def _qmax(max_digits: int) -> int:
    """Largest quantity to convert: 9 for one digit, else 2 * 10**(max_digits - 1) (20 by default)."""
    return 9 if max_digits <= 1 else 2 * 10 ** (max_digits - 1)


def _sub_operands(i: int, d: int) -> tuple:
    # Triangular indexing over pairs with 0 <= b <= a: i = a*(a+1)/2 + b.
    a = (isqrt(8 * i + 1) - 1) // 2
    return a, i - a * (a + 1) // 2


def _compare_operands(i: int, d: int) -> tuple:
    # Ordered pairs with a != b: the second number skips the value of the first.
    a, r = divmod(i, _n(d) - 1)
    return a, r + (r >= a)


def _triple(i: int, d: int) -> tuple:
    x, rest = divmod(i, _n(d) ** 2)
    return (x, *divmod(rest, _n(d)))


def _convert_operands(i: int, d: int) -> tuple:
    u, q = divmod(i, _qmax(d))
    return UNITS[u][0], q + 1


def _digits_swapped(n: int) -> int:
    """12 -> 21, 7 -> 7, 10 -> 1: the digit-order slip."""
    return int(str(n)[::-1])


def _number_slips(g: int) -> list[int]:
    """Off-by-one, off-by-ten and swapped digits of a non-negative gold number."""
    return [v for v in (g + 1, g - 1, g + 10, g - 10, _digits_swapped(g)) if v >= 0]


def _word_slips(s: str, rng: random.Random) -> list[str]:
    """Misspellings: two adjacent letters swapped, one letter dropped, one letter doubled."""
    i = rng.randrange(len(s))
    j = rng.randrange(len(s) - 1) if len(s) > 1 else 0
    swapped = s[:j] + s[j + 1 : j + 2] + s[j] + s[j + 2 :]
    return [swapped, s[:i] + s[i + 1 :], s[:i] + s[i] + s[i:]]


def _num_list(xs: Iterable[int]) -> str:
    return ", ".join(str(x) for x in xs)


def _sort_number_mistakes(ops: tuple, gold: str, rng: random.Random) -> list[str]:
    s = sorted(ops)
    j = rng.randrange(2)
    swapped = s[:j] + [s[j + 1], s[j]] + s[j + 2 :]
    bumped = list(s)
    bumped[rng.randrange(3)] += rng.choice((1, -1)) if min(s) > 0 else 1
    return [_num_list(ops), _num_list(reversed(s)), _num_list(swapped), _num_list(bumped)]


def _convert_fields(ops: tuple) -> dict:
    code, q = ops
    _, sg, pl, to, f = _UNIT_BY_CODE[code]
    return {"q": q, "unit": sg if q == 1 else pl, "sg": sg, "pl": pl, "to": to, "f": f}


def _convert_mistakes(ops: tuple, gold: str, rng: random.Random) -> list[str]:
    _, q = ops
    f = _UNIT_BY_CODE[ops[0]][4]
    g = q * f
    wrong = [g * 10, g + f, g - f, q, g + 1]
    if f % 10 == 0:
        wrong.append(g // 10)
    return [str(v) for v in wrong if v >= 0]


def _count_fields(ops: tuple) -> dict:
    w, c = ops
    k = w.count(c)
    return {"w": w, "l": c, "times": "time" if k == 1 else "times", "spelled": "-".join(w)}


TASK_DEFS: dict[str, TaskDef] = {
    t.name: t
    for t in (
        TaskDef(
            "add",
            ("What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.",
             "Add these two numbers.\n{a} and {b}"),
            ("To add {a} and {b}, start at {a} and count up by {b}. So {a} plus {b} is {ans}.",
             "The sum of {a} and {b} is {ans}, because {a} + {b} = {ans}."),
            lambda d: _n(d) ** 2,
            lambda i, d: divmod(i, _n(d)),
            lambda o: str(o[0] + o[1]),
            lambda o: {"a": o[0], "b": o[1]},
            lambda o, g, rng: [str(v) for v in _number_slips(int(g)) + [abs(o[0] - o[1])]],
        ),
        TaskDef(
            "sub",
            ("What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}.",
             "Compute the difference {a} - {b}.", "Subtract the second number from the first.\n{a}, {b}"),
            ("To subtract {b} from {a}, start at {a} and count down by {b}. So {a} minus {b} is {ans}.",
             "The difference between {a} and {b} is {ans}, because {a} - {b} = {ans}."),
            lambda d: _n(d) * (_n(d) + 1) // 2,
            _sub_operands,
            lambda o: str(o[0] - o[1]),
            lambda o: {"a": o[0], "b": o[1]},
            lambda o, g, rng: [str(v) for v in _number_slips(int(g)) + [o[0] + o[1]]],
        ),
        TaskDef(
            "compare",
            ("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?",
             "What is the larger of {a} and {b}?", "Pick the greater number: {a} or {b}.",
             "Return the larger number.\n{a}, {b}"),
            ("Between {a} and {b}, the larger number is {ans}, since {ans} is greater than {small}.",
             "{ans} is bigger than {small}, so the larger of {a} and {b} is {ans}."),
            lambda d: _n(d) * (_n(d) - 1),
            _compare_operands,
            lambda o: str(max(o)),
            lambda o: {"a": o[0], "b": o[1], "small": min(o)},
            lambda o, g, rng: [str(min(o))] + [str(v) for v in _number_slips(int(g))],
        ),
        TaskDef(
            "reverse",
            ("Reverse the word {w}.", "Spell {w} backwards.", "What is {w} written in reverse?",
             "Write the letters of {w} in reverse order.", "Reverse the following word.\n{w}"),
            ("Reading the letters of {w} from last to first gives {ans}.", "The word {w} spelled backwards is {ans}."),
            lambda d: len(WORDS),
            lambda i, d: (WORDS[i],),
            lambda o: o[0][::-1],
            lambda o: {"w": o[0]},
            lambda o, g, rng: [o[0]] + _word_slips(g, rng),
        ),
        TaskDef(
            "sort_letters",
            ("Sort the letters of {w} alphabetically.", "Put the letters of {w} in alphabetical order.",
             "Arrange the letters in {w} from a to z.", "What do you get when you sort the letters of {w}?",
             "Sort the letters of this word.\n{w}"),
            ("The letters of {w} in alphabetical order are {ans}.",
             "Sorting the letters of {w} from a to z gives {ans}."),
            lambda d: len(WORDS),
            lambda i, d: (WORDS[i],),
            lambda o: "".join(sorted(o[0])),
            lambda o: {"w": o[0]},
            lambda o, g, rng: [o[0], g[::-1]] + _word_slips(g, rng),
        ),
        TaskDef(
            "sort_numbers",
            ("Sort {x}, {y}, {z} from smallest to largest.", "Put {x}, {y} and {z} in increasing order.",
             "Order these numbers from least to greatest: {x}, {y}, {z}.", "Arrange {x}, {y}, {z} in ascending order.",
             "Sort these numbers in ascending order.\n{x}, {y}, {z}"),
            ("From smallest to largest, the numbers {x}, {y} and {z} are {ans}.",
             "Putting {x}, {y}, {z} in increasing order gives {ans}."),
            lambda d: _n(d) ** 3,
            _triple,
            lambda o: _num_list(sorted(o)),
            lambda o: {"x": o[0], "y": o[1], "z": o[2]},
            _sort_number_mistakes,
        ),
        TaskDef(
            "count",
            ("How many times does the letter {l} appear in {w}?", "Count the letter {l} in the word {w}.",
             "How many {l}'s are in {w}?", "In the word {w}, how many times does {l} occur?",
             "Count how many times the letter appears in the word.\nletter: {l}, word: {w}"),
            ("The letter {l} appears {ans} {times} in the word {w}.",
             "Spell {w} out letter by letter: {spelled}. The letter {l} shows up {ans} {times}."),
            lambda d: len(COUNT_KEYS),
            lambda i, d: COUNT_KEYS[i],
            lambda o: str(o[0].count(o[1])),
            _count_fields,
            lambda o, g, rng: [str(v) for v in (int(g) + 1, int(g) - 1, int(g) + 2, len(o[0])) if v >= 0],
        ),
        TaskDef(
            "convert",
            ("How many {to} are in {q} {unit}?", "Convert {q} {unit} to {to}.", "{q} {unit} is how many {to}?",
             "Express {q} {unit} in {to}.", "Convert the quantity to {to}.\n{q} {unit}"),
            ("There are {f} {to} in one {sg}, so {q} {unit} is {ans} {to}.",
             "To turn {pl} into {to}, multiply by {f}: {q} {unit} is {ans} {to}."),
            lambda d: len(UNITS) * _qmax(d),
            _convert_operands,
            lambda o: str(o[1] * _UNIT_BY_CODE[o[0]][4]),
            _convert_fields,
            _convert_mistakes,
        ),
    )
}
