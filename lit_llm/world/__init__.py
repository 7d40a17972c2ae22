"""The built-in task world: the default dataset of every stage, generated offline and deterministically from a seed.

Tasks (see `TASKS`; definitions in `defs.py`): addition, subtraction (never negative), comparison (which of two
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

Layout: `defs` (word list, units, templates, solvers, typical mistakes), `examples` (keys, splits, the example
stream), `gold` (the verifier: answers, correctness, distances, wrong answers), `records` (every stage's records),
`corpus` (the pretraining corpus); this package re-exports the public API.

Deliberate simplifications: scored responses carry the binary gold reward (1.0/0.0), not a graded score; junk
documents are drawn from small fixed pools, so two junk documents may coincide.
"""

from lit_llm.world.corpus import CORPUS_KINDS, Corpus, pretrain_corpus, shingle_jaccard
from lit_llm.world.defs import ANSWER_FORMATS, make_key
from lit_llm.world.examples import SPLITS, TASKS, Example, make_examples, split_of
from lit_llm.world.gold import answer_distance, extract_answer, gold_accuracy, gold_reward, is_correct, wrong_answers
from lit_llm.world.records import (alpaca_prompt, ppo_prompts, preference_pairs, ranked_lists, read_jsonl,
                                   scored_responses, sft_records, write_jsonl)

# the source name that stands for this world wherever a data module or `lit-llm prepare` takes a source
TASKS_SOURCE = "tasks"

__all__ = [
    "ANSWER_FORMATS", "CORPUS_KINDS", "SPLITS", "TASKS", "TASKS_SOURCE", "Corpus", "Example", "alpaca_prompt", "answer_distance",
    "extract_answer", "gold_accuracy", "gold_reward", "is_correct", "make_examples", "make_key", "ppo_prompts",
    "preference_pairs", "pretrain_corpus", "ranked_lists", "read_jsonl", "scored_responses", "sft_records",
    "shingle_jaccard", "split_of", "write_jsonl", "wrong_answers",
]
