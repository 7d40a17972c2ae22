"""`lit-llm prepare`: each cleaning step on hand-made documents, dedup on the task world's labels, mixing shares,
determinism, the output folder as TextDataModule input, the MLflow run, and bad input."""

import json
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from lit_llm.commands import main
from lit_llm.data import prepare as prep
from lit_llm.data.cleaning import (
    STEPS, CleaningConfig, LanguageConfig, NormalizeConfig, QualityConfig, blocklist_batch, clean_corpus,
    compile_blocklist, detect_language, dup_ngram_ratio, junk_char_ratio, language_identifier, language_ok,
    normalize_text, quality_reason, top_ngram_ratio,
)
from lit_llm.data.dedup import NearDedupConfig, exact_key, first_occurrences, minhash_signature, near_duplicates
from lit_llm.data.mixing import plan_totals, sample_documents
from lit_llm.data.prepare import PrepareConfig, prepare
from lit_llm.world import pretrain_corpus
from lit_llm.data.text import PREPARED_MARKER, TextDataModule

datasets.disable_progress_bars()
REPO = Path(__file__).resolve().parents[1]

PROSE = ("The river ran past the old mill where the miller kept his grain in tall wooden bins. Every morning he "
         "opened the doors, checked the wheel, and listened to the water turning the heavy stones below the floor.")
# relaxed n-gram limits for the short, templated task-world documents (as in configs/prepare/tiny.yaml)
TASK_QUALITY = QualityConfig(max_top_ngram_ratio={2: 0.3, 3: 0.4, 4: 0.45}, max_dup_ngram_ratio={5: 0.25, 10: 0.15})


# ------------------------------------------------------------------------------------------------- single steps
def test_normalize_unicode_and_whitespace():
    cfg = NormalizeConfig()
    assert normalize_text("\ufb01ne \uff11\uff12", cfg) == "fine 12"  # NFKC: ligature, full-width digits
    text = "  def f():\r\n      return 1   \r\n\r\n\r\n\n\nzero\u200bwidth\x07  \n"
    assert normalize_text(text, cfg) == "def f():\n      return 1\n\nzerowidth"  # indentation inside kept
    assert normalize_text("\ufb01", NormalizeConfig(form="none", whitespace=False)) == "\ufb01"


def test_quality_rules_each_catch_their_case():
    cfg = QualityConfig(min_words=5, max_words=60)
    assert quality_reason(PROSE, cfg) == ""
    assert quality_reason("Page not found", cfg) == "min_words"
    assert quality_reason(PROSE + " " + PROSE, cfg) == "max_words"
    assert quality_reason("#$% @@{} ||| <<>> ~~^^ [[]] ok words here", cfg) == "junk_chars"
    assert quality_reason("\n".join(["Click here to subscribe now!"] * 3 + ["A line of its own."]), cfg) \
        == "repeated_lines"
    assert quality_reason("buy cheap pills " * 6 + PROSE[:60], cfg) == "top_ngram"
    spam = "one two three four five six seven eight nine ten " * 3
    assert quality_reason(spam, QualityConfig(min_words=5, max_top_ngram_ratio={})) == "dup_ngram"
    assert junk_char_ratio("a#b") == pytest.approx(1 / 3)
    assert top_ngram_ratio("a b a b c".split(), 2) == pytest.approx(4 / 5)
    assert dup_ngram_ratio("x y z x y z".split(), 3) == pytest.approx(0.5)


def test_language_filter_with_langid():
    cfg = LanguageConfig(enabled=True, languages=["en"], min_confidence=0.5)
    lang, conf = detect_language(PROSE)
    assert lang == "en" and conf > 0.9 and language_ok(lang, conf, cfg)
    french = "Le chat dort sur le canapé pendant que la pluie tombe doucement sur les toits de la ville."
    assert detect_language(french)[0] == "fr" and not language_ok(*detect_language(french), cfg)
    assert not language_ok("en", 0.4, cfg)
    # the sparse naive-Bayes product must agree with langid's own (normalised) classification
    assert detect_language(french) == pytest.approx(language_identifier().classify(french))


def test_blocklist_words_phrases_and_regex():
    pattern = compile_blocklist(["# comment", "", "casino", "cookie policy", r"re:\bfree\s+money\b"])
    texts = ["A CASINO opened.", "A classic casinos story.", "Read our Cookie  Policy", "get FREE money now", "ok"]
    assert blocklist_batch({"text": texts}, pattern)["block_hits"] == [1, 0, 0, 1, 0]
    assert blocklist_batch({"text": ["casino casino"]}, pattern)["block_hits"] == [2]
    assert compile_blocklist(["# only comments"]) is None


def test_exact_dedup_on_normalised_text():
    keys = [exact_key(t) for t in ["Hello  World", "hello world\n", "Hello, world", "HELLO WORLD"]]
    assert first_occurrences(keys).tolist() == [True, False, True, False]


def test_near_dedup_known_pairs():
    base = " ".join(f"w{i}" for i in range(100))
    edited = base.replace("w50", "changed")  # 5 of 96 word 5-shingles differ: Jaccard ~0.9
    other = " ".join(f"v{i}" for i in range(100))
    for cfg in (NearDedupConfig(threshold=0.7), NearDedupConfig(threshold=0.7, shingle="char", ngram=5)):
        sigs = [minhash_signature(t, cfg) for t in (base, other, edited, base[: len(base) // 3])]
        assert near_duplicates(sigs, cfg).tolist() == [False, False, True, False]


def test_task_world_dedup_and_junk_against_labels():
    corpus = pretrain_corpus(800, seed=3)
    ds = datasets.Dataset.from_dict({"text": corpus.docs, "source": [0] * len(corpus)})
    cfg = CleaningConfig(quality=TASK_QUALITY, near_dedup=NearDedupConfig(threshold=0.6))
    removed = clean_corpus(ds, [[]], cfg, progress=False).removed_by
    junk = corpus.indices("junk")
    assert np.mean(removed[junk] >= 0) >= 0.95
    for kind, limit in (("exact_dup", 0.0), ("near_dup", 0.1)):  # share of pairs where both copies survive
        both = [removed[i] < 0 and removed[corpus.sources[i]] < 0 for i in corpus.indices(kind)]
        assert np.mean(both) <= limit, kind
    copied = {s for s in corpus.sources if s is not None}
    lone_clean = [i for i in corpus.indices("clean") if i not in copied]
    assert np.mean(removed[lone_clean] >= 0) <= 0.02
    by_step = Counter(STEPS[r] for r in removed[removed >= 0])
    assert by_step["exact_dedup"] > 0 and by_step["near_dedup"] > 0 and by_step["quality"] > 0


def test_skipped_step_leaves_a_source_alone():
    ds = datasets.Dataset.from_dict({"text": ["tiny", "tiny", "short one"], "source": [0, 1, 1]})
    cleaned = clean_corpus(ds, [[], ["quality"]], CleaningConfig(quality=QualityConfig(min_words=3)), progress=False)
    assert cleaned.removed_by.tolist() == [STEPS.index("quality"), -1, -1]  # source 1 keeps its short docs


# ------------------------------------------------------------------------------------------------------ mixing
def test_mixing_shares_and_repetition():
    rng = np.random.default_rng(0)
    lengths = [rng.integers(20, 200, size=n) for n in (400, 300, 30)]
    sizes = [float(x.sum()) for x in lengths]
    targets = plan_totals(sizes, [0.5, 0.3, 0.2], [1.0, 1.0, 3.0])
    assert targets[2] == pytest.approx(3 * sizes[2])  # the small source binds, used three times
    picked = [sample_documents(x, t, rng) for x, t in zip(lengths, targets)]
    got = np.array([x[p].sum() for x, p in zip(lengths, picked)], dtype=float)
    assert np.allclose(got / got.sum(), [0.5, 0.3, 0.2], atol=0.01)
    assert Counter(picked[2].tolist()).most_common(1)[0][1] == 3  # upsampled by repeating its documents
    with pytest.raises(ValueError, match="max_epochs"):
        plan_totals(sizes, [0.5, 0.3, 0.2], [1.0, 1.0, 1.0], total=sum(sizes))


# ----------------------------------------------------------------------------------------------- whole command
def micro_config(tmp_path: Path, out: str, seed: int = 0, **extra) -> dict:
    """Task world + a small jsonl of prose, mixed 70/30; language filter off (langid's model loads in seconds)."""
    notes = tmp_path / "notes.jsonl"
    if not notes.exists():
        words, rng = PROSE.replace(".", "").replace(",", "").split(), np.random.default_rng(0)
        lines = [{"body": f"Note {i}: " + " ".join(rng.choice(words, 30)), "id": i} for i in range(40)]
        lines += [{"body": lines[0]["body"], "id": 99}]  # an exact duplicate
        notes.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {
        "out_dir": str(tmp_path / out), "seed": seed, "progress": False,
        "sources": [{"path": "tasks", "max_docs": 200, "weight": 0.7},
                    {"path": str(notes), "text_field": "body", "weight": 0.3, "max_epochs": 4.0}],
        "cleaning": {"quality": {"min_words": 10, "max_top_ngram_ratio": {2: 0.3, 3: 0.4, 4: 0.45},
                                 "max_dup_ngram_ratio": {5: 0.25}},
                     "near_dedup": {"threshold": 0.6}},
        "mix": {"val_fraction": 0.1}, "tokenizer": {"kind": "bpe", "vocab_size": 300},
        "tracking": {"experiment_name": "tests-prepare"}, **extra,
    }


def run_cli(tmp_path: Path, config: dict, *overrides: str) -> None:
    path = tmp_path / f"{Path(config['out_dir']).name}.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["prepare", "--config", str(path), *overrides])


def test_prepare_cli_outputs_stats_mlflow_and_datamodule(tmp_path: Path, mlflow_db: str):
    run_cli(tmp_path, micro_config(tmp_path, "out"))
    out = tmp_path / "out"
    meta = json.loads((out / PREPARED_MARKER).read_text())
    assert set(meta) >= {"dtype", "tokens", "documents", "fingerprint", "task_world"} and meta["task_world"]
    assert len(meta["fingerprint"]) == 16 and meta["dtype"] == "uint16"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["steps"]["exact_dedup"]["sources"]["notes"]["removed"] == 1
    assert stats["steps"]["quality"]["sources"]["tasks"]["removed"] >= 20  # the injected junk (10%)
    assert stats["steps"]["near_dedup"]["sources"]["tasks"]["removed"] > 0
    shares = {name: m["share"] for name, m in stats["mix"]["train"].items()}
    assert shares == pytest.approx({"tasks": 0.7, "notes": 0.3}, abs=0.02)
    assert stats["mix"]["train"]["notes"]["epochs"] > 1.5  # the small source is repeated
    assert not list(tmp_path.glob(".out.tmp-*"))

    dm = TextDataModule(source=str(out), block_size=16, batch_size=2)
    dm.setup()
    assert len(dm.train_tokens) == meta["tokens"]["train"] and len(dm.val_tokens) == meta["tokens"]["val"]
    assert dm.train_tokens[0] == dm.tokenizer.bos_id and dm.is_task_world and dm.fingerprint == meta["fingerprint"]
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (2, 16)

    client = MlflowClient(mlflow_db)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["lit_llm.stage"] == "prepare" and run.data.tags["lit_llm.seed"] == "0"
    assert run.data.tags["lit_llm.data_fingerprint"] == meta["fingerprint"] and "lit_llm.git_sha" in run.data.tags
    assert run.data.metrics["output.train_tokens"] == meta["tokens"]["train"]
    assert run.data.params["tokenizer.vocab_size"] == "300"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"stats.json", "config.yaml"}


def test_same_seed_same_bytes_and_reuse(tmp_path: Path, capsys: pytest.CaptureFixture):
    off = {"tracking": {"enabled": False}}
    a, b = (prepare(cfg_of(micro_config(tmp_path, name, **off))) for name in ("a", "b"))
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()
    assert a.meta["fingerprint"] == b.meta["fingerprint"]
    other_seed = cfg_of(micro_config(tmp_path, "a", seed=5, **off))
    assert prep.fingerprint_of(other_seed) != a.meta["fingerprint"]
    again = prepare(cfg_of(micro_config(tmp_path, "a", **off)))  # same fingerprint: reused, not rebuilt
    assert again.reused and "up to date" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare(other_seed)


def test_failed_prepare_leaves_no_complete_looking_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prep, "write_tokens", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare(cfg_of(micro_config(tmp_path, "dead", tracking={"enabled": False})))
    assert not (tmp_path / "dead").exists() and not list(tmp_path.glob(".dead.tmp-*"))


@pytest.mark.parametrize("name", ["tiny.yaml", "real.yaml"])
def test_shipped_configs_parse(name: str):
    cfg, text = prep.parse_config(["--config", str(REPO / "configs" / "prepare" / name)])
    assert prep.check_config(cfg) and cfg.sources[0].weight > 0 and "sources:" in text


def test_help_shows_the_docstrings(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Jaccard similarity of the shingle sets" in out and "--cleaning.near_dedup.threshold" in out


def test_bad_input_is_named(tmp_path: Path):
    config = micro_config(tmp_path, "bad")
    config["sources"][1]["text_field"] = "text"
    with pytest.raises(SystemExit, match=r"no field 'text'; available fields: \['body', 'id'\]"):
        run_cli(tmp_path, config)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine line"}\n{"text": "oops",\n')
    config["sources"][1]["path"] = str(broken)
    with pytest.raises(SystemExit, match=r"broken.jsonl:2: malformed JSON"):
        run_cli(tmp_path, config)
    with pytest.raises(SystemExit):
        run_cli(tmp_path, micro_config(tmp_path, "typo"), "--cleaning.quality.min_wrods=3")  # unknown key


def cfg_of(config: dict) -> PrepareConfig:
    """The dataclass tree of a config dict, parsed the way `lit-llm prepare` parses it."""
    return prep.parse_config(config)[0]
