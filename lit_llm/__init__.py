"""lit_llm: the whole LLM training pipeline as PyTorch Lightning modules.

Stage classes are imported lazily so that `import lit_llm` (and `lit-llm --help`) stays fast.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "lit_llm.model",
    "Transformer": "lit_llm.model",
    "Tokenizer": "lit_llm.tokenizer",
    "PretrainLM": "lit_llm.stages.pretrain",
    "SFTModule": "lit_llm.stages.sft",
    "RewardModule": "lit_llm.stages.reward",
    "PPOModule": "lit_llm.stages.ppo",
    "DPOModule": "lit_llm.stages.dpo",
    "GRPOModule": "lit_llm.stages.grpo",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lit_llm' has no attribute {name!r}")
