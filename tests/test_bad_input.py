"""Bad input, one case per test, across the data modules it applies to (README, "Bad input"): malformed JSON,
bytes that are not UTF-8, missing fields, empty texts, over-long samples, a split that filtering empties,
misspelt config keys, a tokenizer that does not match its checkpoint, and a failed `lit-llm prepare` over an
earlier output. No training: data modules are set up directly (`prepare` runs on a few documents).

Cells of the matrix tested elsewhere are named where they would be, instead of repeated here."""

import json
import re
from pathlib import Path

import datasets
import pytest
import tokenizers
from tokenizers import AddedToken, models

from lit_llm.checkpoint import load_backbone
from lit_llm.commands import main
from lit_llm.data import prepare as prep
from lit_llm.data.preference import PreferenceDataModule
from lit_llm.data.prompts import PromptDataModule
from lit_llm.data.sft import SFTDataModule
from lit_llm.data.sources import FieldError, RecordError
from lit_llm.data.text import TextDataModule
from lit_llm.hf import export_hf, load_hf
from lit_llm.model import ModelConfig, Transformer
from lit_llm.tokenizer import Tokenizer
from lit_llm.tokenizer_backend import byte_level_backend, byte_symbols
from tests.conftest import REPO

datasets.disable_progress_bars()
TOK = Tokenizer.byte_level()
KINDS = ("text", "sft", "preference", "prompts", "prepare")
RECORD_KINDS = ("sft", "preference", "prompts")  # record-based: a bad record is an error (or skipped, counted)
FIELD = {"text": "text", "prepare": "text", "sft": "output", "preference": "prompt", "prompts": "prompt"}
MODULES = {"sft": SFTDataModule, "preference": PreferenceDataModule, "prompts": PromptDataModule}


def record(kind: str, i: int) -> dict:
    if kind == "sft":
        return {"instruction": f"Say {i}.", "output": f"{i}"}
    if kind == "preference":
        return {"prompt": f"Say {i}.", "chosen": f"{i}", "rejected": "no"}
    if kind == "prompts":
        return {"prompt": f"Say {i}."}
    return {"text": f"Document {i} has a few words in it, enough for the quality filter."}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def records(kind: str, tmp_path: Path, n: int = 10, **changes: dict) -> Path:
    """`n` good records of `kind` in tmp_path/<kind>.jsonl (line i + 1 = record i), record i updated by
    changes[f"r{i}"] (a None value deletes the field)."""
    rows = [record(kind, i) for i in range(n)]
    for key, change in changes.items():
        row = rows[int(key[1:])]
        row.update(change)
        for field, value in change.items():
            if value is None:
                del row[field]
    return write_jsonl(tmp_path / f"{kind}.jsonl", rows)


def load(kind: str, path: Path, tmp_path: Path, **kwargs):
    """The data module of `kind` set up on `path`, or `prepare` run on it (returns its `Prepared`)."""
    if kind == "prepare":
        config = {"out_dir": str(tmp_path / "out"), "progress": False, "sources": [{"path": str(path)}],
                  "cleaning": {"quality": {"min_words": 3}, "language": {"enabled": False},
                               "near_dedup": {"enabled": False}},
                  "mix": {"val_fraction": 0.2}, "tokenizer": {"kind": "byte"}, "tracking": {"enabled": False},
                  **kwargs}
        return prep.prepare(prep.parse_config(config)[0])
    if kind == "text":
        dm = TextDataModule(source=str(path), tokenizer="byte", block_size=8, batch_size=2,
                            cache_dir=str(tmp_path / "cache"), **kwargs)
    else:
        dm = MODULES[kind](source=str(path), **{"val_fraction": 0.2, "batch_size": 2, **kwargs})
        dm.tokenizer = TOK
    dm.setup("fit")
    return dm


# ------------------------------------------------------------------------------------- 1. malformed JSON
# .jsonl for text and prepare: tests/test_text_data.py, tests/test_prepare.py::test_bad_input_is_named
@pytest.mark.parametrize(("kind", "suffix"), [(k, ".jsonl") for k in RECORD_KINDS] + [(k, ".json") for k in KINDS])
def test_malformed_json_names_the_file_and_line(kind: str, suffix: str, tmp_path: Path) -> None:
    rows = [json.dumps(record(kind, i)) for i in range(6)]
    rows[3] = rows[3].replace('": ', '" ', 1)  # line 4 (of the JSON lines, or of the array below) loses a colon
    path = tmp_path / f"bad{suffix}"
    path.write_text("\n".join(rows) + "\n" if suffix == ".jsonl" else "[" + ",\n".join(rows) + "]\n")
    with pytest.raises(ValueError, match=rf"bad{suffix}:4: malformed JSON \(Expecting ':' delimiter"):
        load(kind, path, tmp_path)


# ------------------------------------------------------------------------------------- 2. missing fields
# A missing column of text, sft and prepare sources: tests/test_text_data.py, tests/test_sft.py, test_prepare.py.
@pytest.mark.parametrize("kind", ["preference", "prompts"])
def test_missing_column_names_it_and_the_available_ones(kind: str, tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "good": "a", "bad": "b"} for i in range(5)]
    with pytest.raises(FieldError, match=r"missing field 'prompt'.*available fields: \['bad', 'good', 'question'\]"
                       if kind == "prompts" else r"cannot tell the preference format from the fields \['question'"):
        load(kind, write_jsonl(tmp_path / "renamed.jsonl", rows), tmp_path)
    if kind == "preference":  # a format given, a column missing
        with pytest.raises(FieldError, match=r"no field 'prompt'; available fields: \['question', 'good', 'bad'\]"):
            load(kind, tmp_path / "renamed.jsonl", tmp_path, format="pairs")


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_record_without_a_field_names_its_line_and_the_fields_it_has(kind: str, tmp_path: Path) -> None:
    field = {"sft": "output", "preference": "chosen", "prompts": "prompt"}[kind]
    path = records(kind, tmp_path, r4={field: None, "note": "x"})  # the others have the field: the column exists
    with pytest.raises(FieldError, match=rf"{kind}.jsonl:5: missing field '{field}'.*; available fields: \[.*'note'"):
        load(kind, path, tmp_path)
    assert isinstance(FieldError("x"), ValueError) and str(FieldError("a 'b'")) == "a 'b'"  # no KeyError quotes


@pytest.mark.parametrize("module", [SFTDataModule, PreferenceDataModule])
def test_misspelt_fields_key_names_the_nearest(module: type) -> None:
    with pytest.raises(ValueError, match=r"data.fields: unknown field name 'promt'; did you mean 'prompt'\?"):
        module(fields={"promt": "question"})


# ------------------------------------------------------------------------------------- 3. empty strings
@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_empty_text_of_a_record_is_an_error_naming_it_or_skipped_and_counted(kind: str, tmp_path: Path) -> None:
    path = records(kind, tmp_path, r6={FIELD[kind]: "  "})
    with pytest.raises(RecordError, match=rf"{kind}.jsonl:7: field '{FIELD[kind]}' is empty"):
        load(kind, path, tmp_path)
    dm = load(kind, path, tmp_path, skip_invalid=True)
    assert dm.stats["train"].skipped_invalid + dm.stats["val"].skipped_invalid == 1
    assert dm.stats["train"].records + dm.stats["val"].records == 10


def test_empty_response_is_kept_by_the_preference_data(tmp_path: Path) -> None:
    dm = load("preference", records("preference", tmp_path, r2={"chosen": ""}), tmp_path)  # judged silence
    assert dm.stats["train"].prompts + dm.stats["val"].prompts == 10


@pytest.mark.parametrize("kind", ["text", "prepare"])
def test_empty_documents_are_skipped_and_counted(kind: str, tmp_path: Path) -> None:
    path = records(kind, tmp_path, r1={"text": ""}, r5={"text": None, "note": "no text"})
    if kind == "prepare":
        stats = load(kind, path, tmp_path).stats["read"]["prepare"]
        assert (stats["documents"], stats["skipped_empty"]) == (8, 2)
        return
    with pytest.warns(UserWarning, match=r"text.jsonl: skipped 2 of 10 rows whose 'text' is empty or missing"):
        dm = load(kind, path, tmp_path)
    assert (dm.stats["train"].skipped_empty, dm.stats["train"].documents + dm.stats["val"].documents) == (2, 8)


# ------------------------------------------------------------------------------------- 4. longer than the context
# sft (truncate and drop) and prompts (drop): tests/test_sft.py, tests/test_ppo.py; text and prepare concatenate
# documents and cut blocks, so no document is too long. Here: the preference data module's counts.
@pytest.mark.parametrize("truncation", ["truncate", "drop"])
def test_long_preference_samples_are_counted(truncation: str, tmp_path: Path) -> None:
    path = records("preference", tmp_path, r3={"prompt": "long " * 20}, r7={"chosen": "long " * 20})
    with pytest.warns(UserWarning, match="preference (train|val) data"):
        dm = load("preference", path, tmp_path, max_length=48, truncation=truncation, val_fraction=0.5)
    count = {k: dm.stats["train"].to_dict()[k] + dm.stats["val"].to_dict()[k]
             for k in ("truncated", "dropped_too_long", "prompts")}
    # truncate cuts the long prompt's start and drops the comparison whose response cannot fit; drop drops both
    assert count == ({"truncated": 2, "dropped_too_long": 1, "prompts": 9} if truncation == "truncate"
                     else {"truncated": 0, "dropped_too_long": 2, "prompts": 8})


# ------------------------------------------------------------------------------------- 5. emptied by filtering
@pytest.mark.parametrize("kind", KINDS)
def test_a_split_left_empty_says_why(kind: str, tmp_path: Path) -> None:
    long, short = "word " * 60, {"text": "two words"}
    change = {"text": {"text": "  "}, "prepare": short, "sft": {"instruction": long}, "preference": {"prompt": long},
              "prompts": {"prompt": long}}[kind]
    path = records(kind, tmp_path, **{f"r{i}": dict(change) for i in range(10)})
    want = {"text": r"text.jsonl: no non-empty text in field 'text' \(10 rows, all empty or missing\)",
            "prepare": r"source 'prepare' .* has 0 document\(s\) left after cleaning "
                       r"\(10 removed by \{'quality': 10\}\)",
            "sft": r"sft.jsonl: no train example left of 8 records: dropped_too_long=8 \(longer than max_length=32",
            "preference": r"preference.jsonl: no train comparison left of 8 records: dropped_too_long=8",
            "prompts": r"prompts.jsonl: no train prompt left of 8 records: dropped_too_long=8 \(longer than "
                       r"max_prompt_length=32\)"}[kind]
    options = {"sft": {"max_length": 32, "truncation": "drop"}, "preference": {"max_length": 32, "truncation": "drop"},
               "prompts": {"max_prompt_length": 32}}.get(kind, {})
    with pytest.raises(ValueError, match=want):
        load(kind, path, tmp_path, **options)


def test_every_record_skipped_names_the_first_error(tmp_path: Path) -> None:
    path = records("sft", tmp_path, **{f"r{i}": {"output": ""} for i in range(10)})
    with pytest.raises(ValueError, match=r"no train example left of 8 records: skipped_invalid=8 \(first: .*sft.jsonl:"
                                         r"\d+: field 'output' is empty\)"):
        load("sft", path, tmp_path, skip_invalid=True)


@pytest.mark.parametrize("kind", ["text", "prompts"])
def test_too_little_data_for_one_training_batch_is_named(kind: str, tmp_path: Path) -> None:
    # Both drop the last partial batch: an empty loader would make Lightning train for zero steps, silently.
    dm = load(kind, records(kind, tmp_path), tmp_path)
    dm.batch_size = 128
    with pytest.raises(ValueError, match=r"the train split has \d+ tokens, fewer than the 1025 of 128 blocks"
                       if kind == "text" else r"8 training prompts, fewer than one batch of 128"):
        dm.train_dataloader()


def test_an_empty_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty.jsonl: no records \(the file is empty\)"):
        load("sft", tmp_path / "empty.jsonl", tmp_path)


# ------------------------------------------------------------------------------------- 6. not UTF-8
@pytest.mark.parametrize(("kind", "suffix"), [(k, ".jsonl") for k in KINDS] + [("text", ".txt"), ("prepare", ".txt")])
def test_bytes_that_are_not_utf8_name_the_file_line_and_offset(kind: str, suffix: str, tmp_path: Path) -> None:
    # Inside a JSON string pyarrow takes the byte without complaint, and the failure used to come later, without
    # a file name; the files are now checked before they are read.
    good = records(kind, tmp_path).read_bytes() if suffix == ".jsonl" else b"a first line of text\nthe second\n"
    line_2 = good.index(b"\n") + 1
    bad = good[: line_2 + 3] + b"\xe9" + good[line_2 + 3 :]
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(bad)
    with pytest.raises(ValueError, match=rf"latin1{suffix}:2: not valid UTF-8: byte 0xe9 at file offset "
                                         rf"{line_2 + 3} "):
        load(kind, path, tmp_path)


# ------------------------------------------------------------------------------------- 7. unknown config keys
# Misspelt model, data and trainer keys on the command line and a model key in a YAML file: tests/test_cli.py.
def test_misspelt_data_key_in_a_yaml_file_names_the_nearest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  init_args:\n    max_lenght: 64\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/sft/tiny.yaml"), "--config", str(bad), "--print_config"])
    err = capsys.readouterr().err
    assert "unknown key 'max_lenght' of lit_llm.data.sft.SFTDataModule; did you mean 'max_length'?" in err


@pytest.mark.parametrize(("yaml_text", "hint"), [
    ("sources: [{path: tasks}]\ncleaning: {quality: {min_wrods: 3}}\n",
     "unknown key 'quality.min_wrods'; did you mean 'quality.min_words'?"),
    ("sources: [{path: tasks, text_feild: body}]\n",
     "unknown key 'text_feild' of lit_llm.data.prepare_config.SourceConfig; did you mean 'text_field'?"),
], ids=["nested", "in-a-source"])
def test_misspelt_prepare_key_names_the_nearest(yaml_text: str, hint: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "bad.yaml").write_text(yaml_text)
    with pytest.raises(SystemExit):
        main(["prepare", "--config", str(tmp_path / "bad.yaml")])
    assert hint in capsys.readouterr().err


# ------------------------------------------------------------------------------------- 8. tokenizer mismatches
def plain_tokenizer() -> Tokenizer:
    """Bytes plus <s> and </s>, no chat tokens and no chat template: what a foreign Hugging Face directory brings."""
    backend = byte_level_backend(models.BPE(vocab={s: b for b, s in enumerate(byte_symbols())}, merges=[]))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<s>", "</s>")])
    return Tokenizer(backend)


def hf_dir(path: Path, tokenizer: Tokenizer, vocab_size: int) -> Path:
    model = Transformer(ModelConfig(vocab_size=vocab_size, n_layer=1, n_head=2, d_model=16, max_seq_len=32))
    return export_hf(model, tokenizer, path)


@pytest.mark.parametrize("kind", RECORD_KINDS)
def test_a_tokenizer_without_chat_tokens_falls_back_to_a_plain_template_with_a_warning(kind: str,
                                                                                      tmp_path: Path) -> None:
    """A base model without a chat template or our chat tokens (a sentencepiece Llama-2, say) starts SFT, reward,
    DPO and PPO with Alpaca's plain-text turns and its own eos, said in a warning and the run's params; asking for
    the default template names the tokens it lacks."""
    tokenizer = load_backbone(hf_dir(tmp_path, plain_tokenizer(), 258)).tokenizer
    dm = MODULES[kind](num_val_records=4) if kind == "sft" else MODULES[kind]()
    dm.tokenizer = tokenizer
    with pytest.warns(UserWarning, match=r"chat template plain \(fallback: the tokenizer has no chat_template and no "
                                         r"<\|system\|>, <\|user\|>, <\|assistant\|>, <\|end\|> tokens"):
        dm.setup("fit")
    assert dm.chat_template_note.startswith("plain (fallback")
    ids, mask = tokenizer.render_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    assert tokenizer.decode(ids, skip_special=False) == "<s>### Instruction:\nHi\n\n### Response:\nYo</s>\n\n"
    assert tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special=False) == "Yo</s>"
    dm = MODULES[kind](chat_template="default")
    dm.tokenizer = load_backbone(tmp_path).tokenizer
    with pytest.raises(ValueError, match=r"the tokenizer: chat_template='default' needs the tokens "
                                         r"<\|system\|>, <\|user\|>, <\|assistant\|>, <\|end\|>"):
        dm.setup("fit")


def test_hf_tokenizer_with_ids_beyond_the_embedding_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tokenizer.json has 258 tokens but config.json's vocab_size is 256: ids "
                                         r"256..257 \('<s>', '</s>'\) have no embedding"):
        load_hf(hf_dir(tmp_path, plain_tokenizer(), 256))


def test_special_token_the_config_names_but_the_vocabulary_lacks_is_refused(tmp_path: Path) -> None:
    plain_tokenizer().save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|eot_id|>"}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: eos_token '<\|eot_id\|>' is not a token of"):
        Tokenizer.from_file(tmp_path)


def test_tokenizer_difference_names_the_mismatching_special_token_or_id() -> None:
    # What a stage reports when a checkpoint and the data (or a reference model) bring different tokenizers.
    byte = Tokenizer.byte_level()
    assert byte.difference(Tokenizer.byte_level()) is None
    other_eos = Tokenizer(byte.backend, {**byte.special_tokens, "eos": "<|end|>"})
    assert byte.difference(other_eos) == "eos token '<|end_of_text|>' (id 257) here, '<|end|>' (id 262) there"
    assert byte.difference(plain_tokenizer()) == "bos token '<|begin_of_text|>' (id 256) here, '<s>' (id 256) there"
    bpe = Tokenizer.train(["the cat sat on the mat"] * 20, vocab_size=300)
    assert byte.difference(bpe) == "bos token '<|begin_of_text|>' (id 256) here, '<|begin_of_text|>' (id 0) there"
    swapped = tokenizers.Tokenizer.from_str(byte.backend.to_str())
    swapped.add_tokens(["<|tool|>"])
    assert byte.difference(Tokenizer(swapped)) == "vocab_size 264 here, 265 there"
    assert byte.difference(Tokenizer(byte.backend, chat_template="{{ messages }}")) == "the chat templates differ"


def test_edited_tokenizer_file_does_not_reuse_tokens_of_the_old_one(tmp_path: Path) -> None:
    options = {"source": "tasks", "tokenizer": str(tmp_path / "tok"), "cache_dir": str(tmp_path / "cache")}
    Tokenizer.byte_level().save(tmp_path / "tok")
    before = TextDataModule(**options)._cache_folder()
    plain_tokenizer().save(tmp_path / "tok")
    assert TextDataModule(**options)._cache_folder() != before


# ------------------------------------------------------------------------------------- 9. earlier outputs survive
def test_failed_prepare_leaves_the_earlier_output_as_it_was(tmp_path: Path) -> None:
    first = load("prepare", records("prepare", tmp_path), tmp_path)
    before = {f.name: f.read_bytes() for f in first.out_dir.iterdir()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fine first document"}\n{"text": oops}\n')
    with pytest.raises(FileExistsError, match="overwrite"):  # another corpus is there: refused before reading
        load("prepare", bad, tmp_path)
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed JSON"):
        load("prepare", bad, tmp_path, overwrite=True)
    assert {f.name: f.read_bytes() for f in first.out_dir.iterdir()} == before
    again = load("prepare", records("prepare", tmp_path, r0={"text": "A new first document of some words."}),
                 tmp_path, overwrite=True)
    assert again.meta["fingerprint"] != first.meta["fingerprint"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or old folder left


# ------------------------------------------------------------------------------------- values as written
@pytest.mark.parametrize(("kind", "field", "line"), [("sft", "output", 21), ("preference", "chosen", 26),
                                                     ("prompts", "prompt", 30)])
def test_a_value_of_the_wrong_type_is_named_at_its_own_line_as_written(kind: str, field: str, line: int,
                                                                       tmp_path: Path) -> None:
    """A column of strings that look like numbers ("84") with one real number (7): `datasets` would turn the
    strings into numbers and report another line; the error names line `line` and the 7, and "84" stays a string."""
    rows = [{**record(kind, i), field: str(i + 1)} for i in range(100)]
    rows[line - 1][field] = 7
    path = write_jsonl(tmp_path / f"{kind}.jsonl", rows)
    with pytest.raises(RecordError, match=rf"{kind}.jsonl:{line}\b.*7") as error:
        load(kind, path, tmp_path)
    assert "84" not in str(error.value).replace(str(tmp_path), "")  # (the temporary folder may have an 84)
    rows[line - 1][field] = "7"
    dm = load(kind, write_jsonl(tmp_path / f"{kind}.jsonl", rows), tmp_path)
    assert dm.stats["train"].skipped_invalid == 0


# ----------------------------------------------------------------------------------------- identical pairs
def test_pairs_whose_chosen_and_rejected_are_the_same_are_dropped_and_counted(tmp_path: Path) -> None:
    path = records("preference", tmp_path, n=20, r3={"rejected": "3"}, r7={"chosen": "no"})
    with pytest.warns(UserWarning, match=r"2 pairs dropped: chosen and rejected are the same"):
        dm = load("preference", path, tmp_path)
    assert sum(s.dropped_identical for s in dm.stats.values()) == 2
    assert sum(s.pairs for s in dm.stats.values()) == 18
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": f"Say {i}.", "responses": ["a", "b", "b"]}
                                                      for i in range(10)])
    dm = load("preference", ranked, tmp_path)  # the (b, b) pair goes, the other two keep the prompt's weight
    item = dm.datasets["train"][0].comparison
    assert item.pairs == [(0, 1), (0, 2)] and item.weights == pytest.approx([0.5, 0.5])


def test_a_preference_set_of_identical_pairs_only_is_refused_with_the_counts(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "same.jsonl", [{"prompt": f"Say {i}.", "chosen": "x", "rejected": "x"}
                                                 for i in range(10)])
    with pytest.raises(ValueError, match=r"no train comparison left of 8 records: dropped_identical=8 \(pairs whose "
                                         r"chosen and rejected are the same\)"):
        load("preference", path, tmp_path)


# ---------------------------------------------------------------------------------------- warnings' units
def test_loss_warnings_name_what_they_count(tmp_path: Path) -> None:
    long = "word " * 40
    path = records("preference", tmp_path, n=10, r2={"prompt": long}, r5={"chosen": long})
    with pytest.warns(UserWarning) as caught:
        load("preference", path, tmp_path, max_length=48, val_fraction=0.0001)
    message = " ".join(str(w.message) for w in caught)
    assert re.search(r"preference train data \(9 records\): .*\d+ of \d+ sequences \(prompt \+ response\) cut at "
                     r"the prompt's start to max_length=48 tokens", message)
    path = records("sft", tmp_path, n=10, r2={"output": long})
    with pytest.warns(UserWarning, match=r"SFT train data \(9 records\): 1 of 9 examples cut to max_length=32 "
                                         r"positions"):
        load("sft", path, tmp_path, max_length=32, val_fraction=0.0001, packing=False)
