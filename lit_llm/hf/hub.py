"""Hub ids: `hf:Qwen/Qwen2.5-0.5B-Instruct` (or a bare `owner/name` that is no local path) resolved to a local
directory through `huggingface_hub`: the cache when it holds the model, else a download into it. Offline (no
network, or `HF_HUB_OFFLINE=1`) a model missing from the cache fails at once, naming the id and the cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

HUB_PREFIX = "hf:"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a model needs: config, weights, tokenizer, chat template; never pickles or other frameworks' weights
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]


def looks_like_hub_id(source: str | os.PathLike) -> bool:
    """`hf:owner/name`, or `owner/name` when no such local path exists."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return True
    return bool(REPO_ID.match(text)) and not Path(text).exists()


def resolve_pretrained(source: str | os.PathLike, revision: str | None = None) -> Path:
    """The local directory of `source`: itself when it is a directory, else the hub id's snapshot."""
    if not looks_like_hub_id(source):
        directory = Path(source)
        if not directory.is_dir():
            raise FileNotFoundError(f"{source}: no such directory (a Hugging Face model is a folder with config.json, "
                                    f"or a hub id such as hf:Qwen/Qwen2.5-0.5B)")
        return directory
    repo_id = str(source).removeprefix(HUB_PREFIX)
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass  # not cached yet
    if constants.HF_HUB_OFFLINE:
        raise OSError(f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is "
                      f"set; download it where there is a network (huggingface-cli download {repo_id}) or pass a "
                      f"local directory")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=MODEL_FILES, etag_timeout=10))
    except RepositoryNotFoundError:
        raise OSError(f"{repo_id}: no such model on the Hugging Face hub (or it is gated: log in with "
                      f"`huggingface-cli login`)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise OSError(f"{repo_id}: cannot download it (offline? {type(error).__name__}) and it is not in the Hugging "
                      f"Face cache ({constants.HF_HUB_CACHE}); download it where there is a network "
                      f"(huggingface-cli download {repo_id}) or pass a local directory") from None
