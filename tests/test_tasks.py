"""Tests of the built-in task world (lit_llm.world): determinism, split hygiene, gold answers, scoring,
preference data and the pretraining corpus."""

from __future__ import annotations

import collections
import hashlib
import itertools

import pytest

import lit_llm.world as T
from lit_llm.world.defs import TASK_DEFS, WORDS

GENERATORS = {
    "examples": lambda n, split, seed: T.make_examples(n, split, seed),
    "sft": T.sft_records,
    "pairs": lambda n, split, seed: T.preference_pairs(n, split, seed, label_noise=0.2),
    "ranked": T.ranked_lists,
    "scored": T.scored_responses,
    "ppo": T.ppo_prompts,
}


def _key(record) -> str:
    return record.key if isinstance(record, T.Example) else record["key"]


def _prompt(record) -> str:
    if isinstance(record, T.Example):
        return record.prompt
    if "instruction" in record:
        return T.alpaca_prompt(record["instruction"], record["input"])
    return record["prompt"]


def _ops(key: str) -> list:
    return [int(p) if p.isdigit() else p for p in key.split(":", 1)[1].split(",")]


# Independent re-implementation of every task's gold answer.
_FACTORS = {"km_m": 1000, "m_cm": 100, "kg_g": 1000, "l_ml": 1000, "h_min": 60, "min_s": 60, "d_h": 24, "wk_d": 7,
            "usd_c": 100, "ft_in": 12}
_SOLVE = {
    "add": lambda o: str(o[0] + o[1]),
    "sub": lambda o: str(o[0] - o[1]),
    "compare": lambda o: str(o[0] if o[0] > o[1] else o[1]),
    "reverse": lambda o: "".join(reversed(o[0])),
    "sort_letters": lambda o: "".join(sorted(o[0])),
    "sort_numbers": lambda o: ", ".join(map(str, sorted(o))),
    "count": lambda o: str(sum(c == o[1] for c in o[0])),
    "convert": lambda o: str(o[1] * _FACTORS[o[0]]),
}


# ------------------------------------------------------------------------------------------------ determinism
@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_deterministic(name):
    gen = GENERATORS[name]
    assert gen(40, "train", 3) == gen(40, "train", 3)
    assert gen(40, "train", 3) != gen(40, "train", 4)
    assert gen(40, "val", 3) != gen(40, "train", 3)


def test_corpus_deterministic():
    a, b, c = T.pretrain_corpus(60, seed=1), T.pretrain_corpus(60, seed=1), T.pretrain_corpus(60, seed=2)
    assert a == b
    assert a.docs != c.docs


def test_make_examples_prefix_and_args():
    assert T.make_examples(30, "val", 5) == T.make_examples(31, "val", 5)[:30]
    with pytest.raises(ValueError):
        T.make_examples(1, "dev")
    with pytest.raises(ValueError):
        T.make_examples(1, tasks=["multiply"])
    with pytest.raises(ValueError):
        T.make_examples(1, max_digits=0)


# ---------------------------------------------------------------------------------------------- split hygiene
def test_split_of_is_sha256_80_10_10():
    keys = [f"add:{a},{b}" for a in range(100) for b in range(100)]
    for key in keys[:50]:  # independent recomputation of the documented rule
        bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 1000
        assert T.split_of(key) == ("train" if bucket < 800 else "val" if bucket < 900 else "test")
    share = collections.Counter(map(T.split_of, keys))
    assert abs(share["train"] / len(keys) - 0.8) < 0.02
    assert abs(share["val"] / len(keys) - 0.1) < 0.02


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_split_hygiene(name):
    gen = GENERATORS[name]
    by_split = {split: gen(300, split, 0) for split in T.SPLITS}
    for split, records in by_split.items():
        assert all(T.split_of(_key(r)) == split for r in records)
    keys = {s: {_key(r) for r in recs} for s, recs in by_split.items()}
    prompts = {s: {_prompt(r) for r in recs} for s, recs in by_split.items()}
    for held_out in ("val", "test"):
        assert not keys[held_out] & keys["train"]
        assert not prompts[held_out] & prompts["train"]


def test_corpus_holds_no_held_out_example():
    val_prompts = [ex.prompt for ex in T.make_examples(300, "val", 0)]
    leaks = [f"Q: {p}\nA:" for p in val_prompts] + [f"User: {p}\nAssistant:" for p in val_prompts]
    train_text = "\n\n".join(T.pretrain_corpus(400, seed=0).docs)
    assert not [s for s in leaks if s in train_text]
    val_text = "\n\n".join(T.pretrain_corpus(400, seed=0, split="val").docs)  # the check can detect a leak
    assert [s for s in leaks if s in val_text]


def test_unique_keys_and_balance():
    val = T.make_examples(300, "val", 0)
    assert len({e.key for e in val}) == 300
    counts = collections.Counter(e.task for e in T.make_examples(800, "train", 0))
    assert set(counts) == set(T.TASKS) and max(counts.values()) - min(counts.values()) <= 1
    # A task used up in a split: unique=True moves on (new cycle only when all are used up), unique=False repeats.
    val_keys = {f"reverse:{w}" for w in WORDS if T.split_of(f"reverse:{w}") == "val"}
    only_reverse = [e.key for e in T.make_examples(60, "val", 0, tasks=["reverse"])]
    assert 0 < len(val_keys) < 30
    assert set(only_reverse[: len(val_keys)]) == val_keys == set(only_reverse)  # each cycle covers all keys once
    balanced = collections.Counter(e.task for e in T.make_examples(800, "val", 0, unique=False))
    assert max(balanced.values()) - min(balanced.values()) <= 1


def test_max_digits_knob():
    small = T.make_examples(200, "train", 0, tasks=["add", "sub", "compare", "sort_numbers"], max_digits=1)
    assert all(x < 10 for e in small for x in _ops(e.key))
    big = T.make_examples(200, "train", 0, tasks=["add"], max_digits=3)
    assert max(x for e in big for x in _ops(e.key)) >= 100


# --------------------------------------------------------------------------------------------- gold answers
def test_gold_answers_are_right():
    examples = T.make_examples(800, "train", 7) + T.make_examples(200, "test", 7, max_digits=3)
    assert {e.task for e in examples} == set(T.TASKS)
    for e in examples:
        ops = _ops(e.key)
        assert e.key.split(":")[0] == e.task
        assert e.answer == _SOLVE[e.task](ops), e
        if e.task == "sub":
            assert ops[0] >= ops[1]
        words = [str(o) for o in ops if not (isinstance(o, str) and "_" in o)]
        assert all(w in e.prompt for w in words), e  # the prompt states its operands


def test_templates_varied():
    assert all(len(set(t.templates)) >= 4 for t in TASK_DEFS.values())
    seen = collections.defaultdict(set)
    for e in T.make_examples(800, "train", 0):
        seen[e.task].add(e.prompt.split()[0] + str("\n" in e.prompt))
    assert all(len(v) >= 3 for v in seen.values())


@pytest.mark.parametrize("response, expected", [
    ("42", "42"), ("42.", "42"), ("  42  \n", "42"), ("The answer is 42.", "42"), ("the answer is: 42", "42"),
    ("Answer: 42", "42"), ("A: 42", "42"), ("So the answer is 17.\nBecause...", "17"), ("\n\nelppa\nmore", "elppa"),
    ("ELPPA", "elppa"), ('The answer is "nworb".', "nworb"), ("3,7,12", "3, 7, 12"), ("3 ,  7, 12.", "3, 7, 12"),
    ("1,000", "1000"), ("", ""),
])
def test_extract_answer(response, expected):
    assert T.extract_answer(response) == expected


def test_scoring():
    ex = T.Example("add", "add:12,5", "What is 12 plus 5?", "17")
    assert T.is_correct(ex, "The answer is 17.") and not T.is_correct(ex, "71")
    assert T.gold_reward({"answer": "elppa"}, "Elppa.") == 1.0
    assert T.gold_reward({"answer": "elppa"}, "apple") == 0.0
    assert T.gold_accuracy([ex, ex], ["17", "18"]) == 0.5
    assert T.gold_accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        T.gold_accuracy([ex], [])


# ---------------------------------------------------------------------------------------------- stage records
def test_sft_records():
    records = T.sft_records(200, "train", 0)
    assert all(set(r) >= {"instruction", "input", "output"} for r in records)
    assert any(r["input"] for r in records) and any(not r["input"] for r in records)
    assert all(T.is_correct(r, r["output"]) and r["answer"] in r["output"] for r in records)
    assert {r["output"] != r["answer"] for r in records} == {True, False}  # both answer sentence formats


def test_preference_pairs_without_noise():
    pairs = T.preference_pairs(400, "train", 0)
    assert not any(p["label_flipped"] for p in pairs)
    for p in pairs:
        assert T.is_correct(p, p["chosen"]) and not T.is_correct(p, p["rejected"]), p
        assert T.extract_answer(p["rejected"]) != ""
    assert len({p["task"] for p in pairs}) == len(T.TASKS)


def test_preference_label_noise():
    pairs = T.preference_pairs(2000, "train", 1, label_noise=0.25)
    flipped = [p["label_flipped"] for p in pairs]
    assert abs(sum(flipped) / len(pairs) - 0.25) < 0.04
    for p in pairs:
        assert T.is_correct(p, p["chosen"]) != p["label_flipped"]
        assert T.is_correct(p, p["rejected"]) == p["label_flipped"]
    with pytest.raises(ValueError):
        T.preference_pairs(1, label_noise=1.5)


@pytest.mark.parametrize("k", [2, 4, 6])
def test_ranked_lists_order(k):
    for r in T.ranked_lists(300, "train", 0, k=k):
        responses = r["responses"]
        assert len(responses) == k == len(set(responses))
        assert T.is_correct(r, responses[0])
        assert not any(T.is_correct(r, x) for x in responses[1:])
        dist = [T.answer_distance(r["answer"], T.extract_answer(x)) for x in responses]
        assert dist[0] == 0 and all(a < b for a, b in zip(dist, dist[1:])), (r, dist)


def test_answer_distance():
    assert T.answer_distance("17", "19") == 2
    assert T.answer_distance("3, 7, 12", "3, 12, 7") == 10
    assert T.answer_distance("elppa", "elpa") == 1
    assert T.answer_distance("elppa", "apple") == 4


def test_scored_responses_and_ppo_prompts():
    scored = T.scored_responses(400, "train", 0)
    assert all(s["score"] == T.gold_reward(s, s["response"]) for s in scored)
    assert 0.4 < sum(s["score"] for s in scored) / len(scored) < 0.6
    ppo = T.ppo_prompts(100, "test", 0)
    assert all(set(p) == {"prompt", "answer", "task", "key"} for p in ppo)
    assert all(T.gold_reward(p, f"The answer is {p['answer']}.") == 1.0 for p in ppo)


# ----------------------------------------------------------------------------------------------------- corpus
def _answer_lines(doc: str) -> list[str]:
    return [line for line in doc.split("\n") if line.startswith(("A: ", "Assistant: "))]


def test_corpus_composition():
    n = 300
    c = T.pretrain_corpus(n, seed=0, dup_rate=0.1, near_dup_rate=0.15, junk_rate=0.2, junk_line_rate=0.2)
    counts = collections.Counter(c.kinds)
    assert len(c) == len(c.kinds) == len(c.sources) == len(c.junk_lines) == n
    assert (counts["exact_dup"], counts["near_dup"], counts["junk"], counts["clean"]) == (30, 45, 60, 165)
    assert c.indices("junk") == [i for i, k in enumerate(c.kinds) if k == "junk"]
    for i, (doc, kind, src) in enumerate(zip(c.docs, c.kinds, c.sources)):
        assert (src is None) == (kind in ("clean", "junk"))
        if src is not None:
            assert c.kinds[src] == "clean" and src != i and c.junk_lines[i] == c.junk_lines[src]
        if kind == "exact_dup":
            assert doc == c.docs[src]
        if kind == "near_dup":
            assert doc != c.docs[src] and 0.7 <= T.shingle_jaccard(doc, c.docs[src]) <= 0.9
            assert _answer_lines(doc) == _answer_lines(c.docs[src])  # edits never corrupt an answer
        if kind == "clean":
            assert len(doc.split()) >= 40
    clean_junk = [i for i in c.indices("clean") if c.junk_lines[i]]
    assert 0 < len(clean_junk) < counts["clean"]
    text = "\n".join(c.docs[i] for i in c.indices("clean"))
    assert all(s in text for s in ("Q: ", "\nA: ", "User: ", "\nAssistant: ", "The answer is"))
    with pytest.raises(ValueError):
        T.pretrain_corpus(10, dup_rate=0.5, near_dup_rate=0.3, junk_rate=0.3)


def test_clean_docs_are_not_near_duplicates():
    c = T.pretrain_corpus(400, seed=3)
    clean = [c.docs[i] for i in c.indices("clean")][:120]
    assert len(set(clean)) == len(clean)
    assert max(T.shingle_jaccard(a, b) for a, b in itertools.combinations(clean, 2)) < 0.5


def test_junk_docs_look_like_junk():
    c = T.pretrain_corpus(300, seed=0, junk_rate=0.3)
    for i in c.indices("junk"):
        doc = c.docs[i]
        assert "Q: " not in doc and "Assistant:" not in doc
        lines = doc.split("\n")
        assert len(doc.split()) < 40 or len(set(lines)) == 1 or sum(ch.isalpha() for ch in doc) < len(doc) / 4


# ------------------------------------------------------------------------------------------------------ files
def test_write_jsonl_roundtrip(tmp_path):
    path = tmp_path / "sub" / "data.jsonl"
    records = T.preference_pairs(5, "train", 0)
    assert T.write_jsonl(records, path) == 5
    assert T.read_jsonl(path) == records
    T.write_jsonl(T.make_examples(3), path)
    assert [T.Example(**r) for r in T.read_jsonl(path)] == T.make_examples(3)
