"""`lit-llm perplexity`: the windows score every token once, and the loss equals `transformers`' on the same
windows (its documented sliding-window perplexity loop) for an imported model with its own tokenizer."""

import json
import math
from pathlib import Path

import pytest
import torch

from lit_llm.commands import main
from lit_llm.perplexity import windows
from tests.hf_fixtures import hf_chat_model, training_texts

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(("n", "window", "stride"), [(10, 4, 2), (10, 4, 4), (3, 8, 4), (17, 5, 3), (2, 2, 1)])
def test_windows_score_every_token_after_the_first_exactly_once(n: int, window: int, stride: int) -> None:
    scored, starts = [], []
    for begin, end, first in windows(n, window, stride):
        assert end - begin <= window and begin < first <= end
        scored += range(first, end)
        starts.append(begin)
    unscored = set(starts) if stride == window else {0}  # nothing before a window's first token when they abut
    assert scored == [p for p in range(n) if p not in unscored]


def hf_sliding_window_nll(model, ids: torch.Tensor, window: int, stride: int) -> tuple[float, int]:
    """Hugging Face's "perplexity of fixed-length models" loop, summing instead of averaging."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + window, ids.shape[1])
        x = ids[:, begin:end]
        labels = x.clone()
        labels[:, : -(end - prev_end)] = -100
        scored = int((labels[:, 1:] != -100).sum())
        with torch.no_grad():
            total += model(x, labels=labels).loss.item() * scored
        count += scored
        prev_end = end
        if end == ids.shape[1]:
            break
    return total, count


def test_perplexity_of_an_imported_model_equals_transformers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = hf_chat_model("llama3", "llama", tmp_path / "model")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(training_texts(30)), encoding="utf-8")
    main(["perplexity", str(model_dir), "--text", str(text), "--window", "64", "--stride", "48", "--json"])
    ours = json.loads(capsys.readouterr().out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = transformers.AutoTokenizer.from_pretrained(model_dir)(text.read_text(), return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == 0  # <|begin_of_text|>: the Llama-3 tokenizer starts a text with bos
    nll, count = hf_sliding_window_nll(theirs, ids, 64, 48)
    assert ours["tokens"] == count == ids.shape[1] - 1
    assert ours["loss"] == pytest.approx(nll / count, abs=1e-5)
    assert ours["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert 0.5 * math.log(theirs.config.vocab_size) < ours["loss"]  # random weights: about chance


def test_perplexity_names_a_missing_text_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no_such.txt: no such file"):
        main(["perplexity", str(tmp_path), "--text", str(tmp_path / "no_such.txt")])
