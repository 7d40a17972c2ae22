"""How many HH-RLHF pairs fit at each max length, rendered with a ChatML template (the reward and DPO data path).

    PYTHONPATH=. python benchmarks/hh_lengths.py --out reports/hh_lengths.md
    PYTHONPATH=. python benchmarks/hh_lengths.py --tokenizer ~/models/Qwen2.5-0.5B-Instruct   # a real tokenizer

Reads ../shared/data/hh_rlhf_harmless_base_test_first1200.jsonl (raw `chosen`/`rejected` transcripts, the
"implicit" format: the prompt is the shared conversation up to the last assistant turn). Without --tokenizer it
trains a stand-in: a byte-level BPE with Qwen2.5-Instruct's special tokens and a ChatML template (the test fixture
`tests/hf_fixtures.py`), on the transcripts themselves. For each max length: pairs kept when a pair that does not
fit is dropped, and pairs kept (and how many cut at the prompt's start) when it is truncated instead.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from lit_llm.data.preference import PreferenceDataModule
from lit_llm.tokenizer import Tokenizer
from tests.hf_fixtures import write_chat_tokenizer

HH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh_rlhf_harmless_base_test_first1200.jsonl"
LENGTHS = (128, 256, 384, 512, 768, 1024, 2048)


def stand_in_tokenizer(source: Path, vocab_size: int) -> Tokenizer:
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    texts = [record[key] for record in records for key in ("chosen", "rejected")]
    directory = Path(tempfile.mkdtemp(prefix="chatml-tokenizer-"))
    write_chat_tokenizer("chatml", directory, vocab_size=vocab_size, texts=texts)
    return Tokenizer.from_file(directory)


def counts(tokenizer: Tokenizer, source: Path, max_length: int, truncation: str) -> dict:
    data = PreferenceDataModule(source=str(source), format="implicit", max_length=max_length, truncation=truncation,
                                val_fraction=0.05)
    data.tokenizer = tokenizer
    data.setup("fit")
    train, val = data.stats["train"].to_dict(), data.stats["val"].to_dict()
    return {key: train[key] + val[key] for key in train}  # both splits: every record of the file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=HH)
    parser.add_argument("--tokenizer", default=None, help="a Hugging Face tokenizer folder (default: the stand-in)")
    parser.add_argument("--vocab_size", type=int, default=4000, help="the stand-in's vocabulary")
    parser.add_argument("--out", type=Path, default=None, help="write the table as markdown here")
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(args.tokenizer) if args.tokenizer else stand_in_tokenizer(args.source,
                                                                                             args.vocab_size)
    full = counts(tokenizer, args.source, 10**6, "drop")
    lengths = [len(tokenizer.encode(json.loads(line)["chosen"]))
               for line in args.source.read_text(encoding="utf-8").splitlines()]
    name = args.tokenizer or f"stand-in ChatML byte-level BPE, {tokenizer.vocab_size} tokens, trained on the file"
    lines = [f"# HH-RLHF pairs that fit, by max length ({args.source.name})", "",
             f"Tokenizer: {name}. Records: {full['records']}; pairs with chosen == rejected dropped: "
             f"{full['dropped_identical']}. Tokens of a chosen transcript (raw text): median "
             f"{statistics.median(lengths):.0f}, max {max(lengths)}.", "",
             "| max length | pairs kept (drop) | share | pairs kept (truncate) | sequences cut at the prompt's start |",
             "|---:|---:|---:|---:|---:|"]
    for max_length in LENGTHS:
        drop, cut = counts(tokenizer, args.source, max_length, "drop"), counts(tokenizer, args.source, max_length,
                                                                                 "truncate")
        lines.append(f"| {max_length} | {drop['pairs']} | {drop['pairs'] / full['pairs']:.1%} | {cut['pairs']} | "
                     f"{cut['truncated']} of {cut['sequences']} |")
    lines += ["", "A real Qwen2.5 tokenizer (151,665 tokens, trained on far more text) encodes English in fewer tokens, "
              "so more pairs fit at each length; `--tokenizer` measures it.", "", "Command: `PYTHONPATH=. python benchmarks/hh_lengths.py --out reports/hh_lengths.md`"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
