"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on the backbone, through `peft`.

`apply_lora` injects peft's LoRA layers into a `Transformer` in place (`peft.inject_adapter_in_model`: the model
keeps its class, its module names and its forward), so every stage trains it unchanged: the base weights are
frozen and only the adapters (and `modules_to_save`, and the stage's own heads, which live outside the backbone)
train. A frozen LoRA layer computes W·x + (α/r)·B·A·x; B starts at zero, so an adapted model starts equal to its
base.

What the stages build on it:
- `adapters_disabled`: the same module as its base (the reference of DPO and PPO without a second copy).
- `merge_adapters`: W ← W + (α/r)·B·A in place and the peft layers replaced by plain `nn.Linear`s again (what
  `load_backbone` returns for a LoRA checkpoint, and what `lit-llm export` writes).
- `weights_digest`: the base's identity stored in a LoRA checkpoint, which holds only what trains.
- `adapter_state_hf` / `adapter_config_hf`: a peft adapter folder (`lit-llm export --adapter_only`) that
  `peft.PeftModel.from_pretrained` loads onto the exported base.

peft (and the transformers it imports) loads on first use, so a full fine-tuning run never pays for it.
"""

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    import peft

ALL_LINEAR = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")  # every linear layer of a block (not the LM head)
ADAPTER = "default"  # peft's adapter name; one adapter per model
HF_MODULE_NAMES = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj", "w_gate": "gate_proj",
                   "w_up": "up_proj", "w_down": "down_proj"}


@dataclass
class LoRAConfig:
    """Low-rank adapters on the backbone; the base weights stay frozen.

    Args:
        r: Rank of each adapter (B·A with A (r, in), B (out, r)).
        alpha: Scale α: the update is (α/r)·B·A.
        dropout: Dropout on each adapter's input.
        target_modules: Our module names to adapt: the attention's "wq", "wk", "wv", "wo" and the MLP's "w_gate",
            "w_up", "w_down"; default q and v (as the LoRA paper); "all-linear" = all seven.
        modules_to_save: Backbone modules trained in full beside the adapters (e.g. "norm"; their original stays
            for the adapter-off reference). The reward and value heads always train: they are the stage's own.
        quantize_base: QLoRA (Dettmers et al. 2023): hold the frozen base's block linears in 4-bit NF4
            (bitsandbytes, `pip install 'lit-llm[qlora]'`) and compute in bf16; the adapters stay float32.
            Loading and export merge the adapters into the full-precision base.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | list[str] = field(default_factory=lambda: ["wq", "wv"])
    modules_to_save: list[str] = field(default_factory=list)
    quantize_base: bool = False

    def targets(self) -> list[str]:
        """The adapted modules' names, "all-linear" expanded; unknown names refused."""
        names = list(ALL_LINEAR) if self.target_modules in ("all-linear", ["all-linear"]) else self.target_modules
        names = [names] if isinstance(names, str) else list(names)
        unknown = sorted(set(names) - set(ALL_LINEAR))
        if unknown or not names:
            raise ValueError(f"lora.target_modules: {unknown or names} are not linear layers of a block; use "
                             f"names from {list(ALL_LINEAR)} or 'all-linear'")
        return names

    def to_dict(self) -> dict:
        return {**asdict(self), "target_modules": self.targets()}

    def peft_config(self) -> "peft.LoraConfig":
        from peft import LoraConfig

        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r} (leave the lora section out for full fine-tuning)")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets(),
                          modules_to_save=list(self.modules_to_save) or None, bias="none")


def apply_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """Inject LoRA layers into `model` (a `Transformer`) in place and freeze everything else; returns it."""
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    if tied and any(name in ("lm_head", "embed") for name in config.modules_to_save):
        raise ValueError("lora.modules_to_save cannot train lm_head or embed of a model that ties them (training "
                         "one would untie them); adapt the blocks instead")
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    if config.quantize_base:
        quantize_linears_4bit(model)
    inject_adapter_in_model(config.peft_config(), model, adapter_name=ADAPTER)
    return model


def quantize_linears_4bit(model: nn.Module) -> None:
    """Replace every block linear layer with bitsandbytes' frozen 4-bit NF4 `Linear4bit` (bf16 compute), quantized
    on the layer's device now (and again wherever Lightning moves it); the LM head and embeddings stay as they are."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ImportError("lora.quantize_base needs bitsandbytes: pip install 'lit-llm[qlora]'") from None
    for name, module in list(model.named_modules()):
        if not (isinstance(module, nn.Linear) and name.rpartition(".")[2] in ALL_LINEAR):
            continue
        layer = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                                  compute_dtype=torch.bfloat16, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(module.weight.data, requires_grad=False, quant_type="nf4")
        if module.bias is not None:
            layer.bias = nn.Parameter(module.bias.data, requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.to(module.weight.device))


def peft_layers(model: nn.Module) -> list[nn.Module]:
    """The LoRA layers and `modules_to_save` wrappers of a model (none when peft was never used)."""
    if not any(".lora_" in name or ".modules_to_save" in name for name, _ in model.named_parameters()):
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]


def has_adapters(model: nn.Module) -> bool:
    return bool(peft_layers(model))


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """`model` computing as its base (adapters off, `modules_to_save` originals back, eval mode) for the block;
    no weight is touched or copied, so it gives exactly the base's outputs."""
    layers = peft_layers(model)
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # also makes the adapters trainable again
        model.train(was_training)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (W + (α/r)·B·A) and put the plain modules back, in place: the model
    then has its original structure and state-dict names and computes what the adapted one did."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            replacement = module.get_base_layer()
        elif isinstance(module, ModulesToSaveWrapper):
            replacement = module.modules_to_save[ADAPTER]
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    model.requires_grad_(True)
    return model


def is_adapter_key(key: str) -> bool:
    """A state-dict key of an adapter or a `modules_to_save` copy (what a LoRA checkpoint keeps of a backbone)."""
    return ".lora_" in key or ".modules_to_save." in key


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's weights (names, dtypes, shapes and bytes, in name order): the identity of a LoRA run's
    base, compared before adapters are put back on it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ peft adapter folder
def adapter_state_hf(backbone_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapters of a backbone's state dict under the names `PeftModel.save_pretrained` writes for the exported
    Hugging Face model (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, ...)."""
    state = {}
    for key, tensor in backbone_state.items():
        if not is_adapter_key(key):
            continue
        if ".lora_" not in key:
            raise ValueError(f"--adapter_only writes LoRA adapters only; {key} is a modules_to_save copy (export "
                             f"the merged model instead)")
        parts = key.split(".")  # blocks, i, attn|mlp, wq, lora_A, default, weight
        _, layer, block, module, matrix, _, param = parts
        hf_block = "self_attn" if block == "attn" else "mlp"
        state[f"base_model.model.model.layers.{layer}.{hf_block}.{HF_MODULE_NAMES[module]}.{matrix}.{param}"] = \
            tensor.detach().cpu().contiguous().clone()
    return state


def adapter_config_hf(config: LoRAConfig, base_model_name_or_path: str) -> "peft.LoraConfig":
    """The peft `LoraConfig` of the exported adapters, with Hugging Face module names."""
    from peft import LoraConfig

    return LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none",
                      target_modules=[HF_MODULE_NAMES[name] for name in config.targets()], task_type="CAUSAL_LM",
                      base_model_name_or_path=base_model_name_or_path)
