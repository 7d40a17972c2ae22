"""Hub ids (`hf:owner/name` or a bare `owner/name`): a model in the Hugging Face cache loads from it without the
network; offline, a model missing from the cache fails at once naming the id and the cache path; a local
directory is never taken for a hub id."""

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from lit_llm.checkpoint import load_backbone, load_tokenizer
from lit_llm.hf import load_hf, looks_like_hub_id
from tests.hf_fixtures import hf_chat_model

pytest.importorskip("transformers")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache, offline, standing in for the user's ~/.cache/huggingface/hub."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(model_dir: Path, cache: Path, repo_id: str) -> None:
    """The layout `snapshot_download` leaves: refs/main naming a commit whose snapshot holds the files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(model_dir, repo / "snapshots" / COMMIT)


def test_a_cached_hub_id_loads_without_the_network(tmp_path: Path, hub_cache: Path) -> None:
    model_dir = hf_chat_model("chatml", "qwen2", tmp_path / "model")
    put_in_cache(model_dir, hub_cache, "acme/tiny-qwen")
    local, _ = load_hf(model_dir)
    x = torch.tensor([[1, 2, 3, 4]])
    for source in ("hf:acme/tiny-qwen", "acme/tiny-qwen"):
        loaded = load_backbone(source)
        with torch.no_grad():
            assert torch.equal(loaded.model(x), local(x))
        assert load_tokenizer(source).chat_template == loaded.tokenizer.chat_template is not None


def test_offline_a_missing_hub_id_fails_at_once_naming_the_id_and_the_cache(hub_cache: Path) -> None:
    with pytest.raises(OSError, match=rf"acme/not-cached: not in the Hugging Face cache \({hub_cache}\)"):
        load_backbone("hf:acme/not-cached")
    with pytest.raises(OSError, match="acme/not-cached"):
        load_tokenizer("acme/not-cached")


def test_a_local_directory_is_not_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert looks_like_hub_id("hf:Qwen/Qwen2.5-0.5B") and looks_like_hub_id("Qwen/Qwen2.5-0.5B")
    (tmp_path / "Qwen" / "Qwen2.5-0.5B").mkdir(parents=True)
    assert not looks_like_hub_id("Qwen/Qwen2.5-0.5B")  # the local folder wins
    assert not looks_like_hub_id("runs/sft/checkpoints/last.ckpt") and not looks_like_hub_id("model.ckpt")
