"""What every stage module shares: the backbone under `self.model`, its tokenizer, the optimizer, and the
checkpoint metadata that lets later stages, `generate` and `export` load any checkpoint safely.

One thin base class, not a hierarchy: each stage adds only its step.
"""

import contextlib
import copy
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn

from lit_llm.checkpoint import META_KEY, LoadedModel, checkpoint_meta, load_backbone
from lit_llm.lora import LoRAConfig, adapters_disabled, apply_lora, is_adapter_key, weights_digest
from lit_llm.model import Transformer
from lit_llm.optim import OptimConfig, configure_adamw
from lit_llm.tokenizer import Tokenizer

# A stage trains float32 weights whatever dtype a Hugging Face model is stored in: the optimizer's master copy
# (Lightning's bf16-mixed autocasts the matmuls; `--trainer.precision=bf16-true` casts the whole module itself).
TRAIN_DTYPE = "float32"


class StageModule(pl.LightningModule):
    """Base of the stage modules.

    Subclasses set `stage`, build `self.model` (a `Transformer`) and `self.tokenizer`, and may set
    `parent_run_id` (the MLflow run that produced their starting weights) and `samples` (rows that
    `SampleGenerations` logs as a table). With `lora`, the backbones it adapts (`adapt`) train only their
    adapters, and its checkpoints hold only what trains plus each base's identity (`lora_bases`). A stage that
    generates answers (`generates`) is scored by the gold evaluation (`evaluation.GoldEval`), which asks it to
    render a question (`render_question`) and to say which tokens end an answer (`answer_stop_ids`); a base model
    (`chat = False`) overrides both.
    """

    stage: str = "base"
    generates: bool = True  # answers questions (the gold evaluation scores it); False for the reward model
    chat: bool = True  # an instruction model asked through the chat template; False for a base model

    def __init__(self, optim: OptimConfig | None = None, lora: LoRAConfig | None = None) -> None:
        super().__init__()
        self.optim, self.lora = optim or OptimConfig(), lora
        self.lora_bases: dict[str, dict[str, str]] = {}  # state-dict prefix -> {"source", "sha256"} of its base
        self.strict_loading = lora is None  # a LoRA checkpoint leaves the frozen base out
        self.model: Transformer | None = None
        self.tokenizer: Tokenizer | None = None
        self.parent_run_id: str | None = None
        self.samples: list[dict] = []
        self.base_seed: int | None = None

    @property
    def flops_per_token(self) -> float | None:
        """Training FLOPs per token of the backbone (for MFU), None before the model exists."""
        return self.model.flops_per_token() if self.model is not None else None

    def load_starting_model(self, init_from: str, activation_checkpointing: bool = False) -> LoadedModel:
        """Load the stage's starting weights and tokenizer (`self.model`, `self.tokenizer`) from a checkpoint of
        any stage or a Hugging Face directory, and remember its MLflow run as this run's parent."""
        loaded = load_backbone(init_from, dtype=TRAIN_DTYPE)
        self.model, self.tokenizer, self.parent_run_id = loaded.model, loaded.tokenizer, loaded.run_id
        self.model.activation_checkpointing = activation_checkpointing
        self.model.train()  # an imported model comes in eval mode (for inference); a stage trains it (dropout on)
        self.adapt(self.model, "model", init_from)
        return loaded

    def adapt(self, backbone: Transformer, prefix: str, source: str) -> None:
        """With `lora`: record the base's identity (where it came from and the digest of its weights) under the
        backbone's state-dict prefix, then put adapters on it (`lit_llm.lora.apply_lora`)."""
        if self.lora is None:
            return
        where = Path(source)
        self.lora_bases[prefix] = {"source": str(where.resolve()) if where.exists() else str(source),
                                   "sha256": weights_digest(backbone)}
        apply_lora(backbone, self.lora)

    # ------------------------------------------------------------------------------- frozen models
    def load_reference(self, ref_from: str | None) -> Transformer | None:
        """A frozen reference policy: a copy of the starting policy, or the backbone of `ref_from`; with `lora` and
        no `ref_from`, None: the policy with its adapters off is the reference (`reference_model`)."""
        if ref_from is None:
            return None if self.lora is not None else copy.deepcopy(self.model)
        loaded = load_backbone(ref_from, dtype=TRAIN_DTYPE)
        self.check_tokenizer(loaded.tokenizer, f"ref_from {ref_from}")
        return loaded.model

    def check_tokenizer(self, tokenizer: Tokenizer, what: str) -> None:
        """Models that score the policy's tokens must share its tokenizer."""
        if (difference := self.tokenizer.difference(tokenizer)) is not None:
            raise ValueError(f"{what} has a different tokenizer than the policy (init_from "
                             f"{getattr(self, 'init_from', '?')}): {difference} (here = the policy's); its token "
                             f"ids would mean other text")

    def set_frozen(self, name: str, model: nn.Module | None) -> None:
        """Keep a frozen model (reference, reward) as `self.<name>` OUTSIDE `nn.Module` registration, so it is not
        in the checkpoint's state_dict, the optimizer or DDP's gradient sync; `frozen` moves it to the device."""
        if model is not None:
            model.requires_grad_(False).eval()
        object.__setattr__(self, name, model)

    def frozen(self, name: str) -> nn.Module:
        """The frozen model `self.<name>`, moved to this module's device on first use."""
        model = getattr(self, name, None)
        if model is None:
            raise RuntimeError(f"the frozen {name} model is not loaded (freed after precomputing its outputs?)")
        if next(model.parameters()).device != self.device:
            model.to(self.device)
        return model

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The reference policy for a block: the frozen `self.reference`, or (LoRA without `ref_from`) the policy
        itself with its adapters disabled, which computes exactly what its base does, without a second copy."""
        if getattr(self, "reference", None) is not None or self.lora is None:
            yield self.frozen("reference")
            return
        with adapters_disabled(self.model) as base:
            yield base

    def mlflow_run_id(self) -> str | None:
        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger):
                return logger.run_id
        return None

    def configure_optimizers(self) -> dict:
        return configure_adamw(self, self.optim, int(self.trainer.estimated_stepping_batches))

    def setup(self, stage: str) -> None:
        """Take the data's tokenizer (its chat template) and check it and the data's length against the model's;
        record the data module's counts (examples, truncated, dropped...) as run params, when it keeps any."""
        datamodule = getattr(self.trainer, "datamodule", None)
        self.adopt_data_tokenizer(datamodule)
        stats = getattr(datamodule, "stats", None)
        if not stats:
            return
        params = {f"data_stats.{split}.{k}": v for split, s in stats.items() for k, v in s.to_dict().items()}
        if getattr(datamodule, "chat_template_note", None):
            params["data_stats.chat_template"] = datamodule.chat_template_note
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def adopt_data_tokenizer(self, datamodule: Any) -> None:
        """The data module (set up first) tokenized with `tokenizer_from`, normally this model's own `init_from`,
        and chose the chat template: the model renders the same way from now on (the checkpoint keeps it), after
        checking that the data's tokens mean the same here."""
        max_length, model = getattr(datamodule, "max_length", None), self.model
        if max_length is not None and model is not None and max_length > model.config.max_seq_len:
            raise ValueError(f"data.max_length={max_length} exceeds the model's max_seq_len={model.config.max_seq_len}")
        data_tokenizer = getattr(datamodule, "tokenizer", None)
        if data_tokenizer is None or self.tokenizer is None or data_tokenizer is self.tokenizer:
            return
        if getattr(datamodule, "chat_template_note", None) is not None:
            self.tokenizer.chat_template = data_tokenizer.chat_template
        if (difference := self.tokenizer.difference(data_tokenizer)) is not None:
            raise ValueError(f"the data was tokenized with another tokenizer "
                             f"({getattr(datamodule, 'tokenizer_from', None) or 'datamodule.tokenizer'}) than the "
                             f"model's (init_from {getattr(self, 'init_from', '?')}): {difference} (here = the "
                             f"model's); its token ids would mean other text")

    def render_question(self, prompt: str, system_prompt: str | None = None) -> list[int]:
        """A question as the model is asked it: [system], user = the question, then the assistant header."""
        return self.tokenizer.render_prompt(prompt, system_prompt)

    def answer_stop_ids(self) -> list[int]:
        """Tokens that end an answer: the end of the assistant's turn (and eos)."""
        return self.tokenizer.chat_stop_ids()

    # ---------------------------------------------------------------------------------------- logging
    def log_train_step(self, loss: torch.Tensor, details: Callable[[], dict[str, torch.Tensor]]) -> None:
        """train/loss every step (the progress bar's), `details()` as train/<name> only on the steps whose metrics
        the logger writes (`log_every_n_steps`): the same values land in MLflow, and the other steps skip Lightning's
        per-call bookkeeping (`self.log` costs ~1 ms a call on a CPU; 6 per step were 8% of a tiny DPO step)."""
        self.log("train/loss", loss, prog_bar=True)
        if getattr(self.trainer._logger_connector, "should_update_logs", True):  # Lightning's own rule
            for name, value in details().items():
                self.log(f"train/{name}", value)

    # ------------------------------------------------------------------------------------- randomness
    def on_fit_start(self) -> None:
        self.base_seed = torch.initial_seed()  # the run's seed (seed_everything), before any per-batch reseeding
        for logger in self.loggers:
            logger.log_hyperparams(trainable_params(self))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed the global RNG (dropout, masking) from (run seed, rank, epoch, batch): training randomness is then
        the same after a resume and independent of whatever validation or logging drew in between."""
        torch.manual_seed(batch_seed(self.base_seed, self.global_rank, self.current_epoch, batch_idx))

    def gathered(self, state: torch.Tensor) -> torch.Tensor:
        """(world, ...) every rank's `state`, on the CPU (a collective call: every rank must make it)."""
        if self.trainer.world_size == 1:
            return state[None].cpu()
        return self.all_gather(state.to(self.device)).cpu()

    # ------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[META_KEY] = checkpoint_meta(self.stage, self.model.config, self.tokenizer, self.mlflow_run_id())
        if self.lora is not None:  # only what trains, and the identity of every frozen base it leaves out
            checkpoint[META_KEY]["lora"] = {"config": self.lora.to_dict(), "bases": dict(self.lora_bases)}
            state = checkpoint["state_dict"]
            checkpoint["state_dict"] = {k: v for k, v in state.items() if not self.is_frozen_base_key(k)}

    def is_frozen_base_key(self, key: str) -> bool:
        """A state-dict key of an adapted backbone's frozen base weights (left out of LoRA checkpoints)."""
        return any(key.startswith(f"{prefix}.") for prefix in self.lora_bases) and not is_adapter_key(key)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume from a checkpoint of another stage or of a differently shaped model, naming why."""
        meta = checkpoint.get(META_KEY, {})
        if meta.get("stage") not in (None, self.stage):
            raise ValueError(
                f"this checkpoint was written by the {meta['stage']!r} stage; {type(self).__name__} resumes only "
                f"{self.stage!r} checkpoints (use init_from to start a new stage from it)"
            )
        if "model_config" in meta and self.model is not None:
            differ = config_differences(meta["model_config"], self.model.config.to_dict())
            if differ:
                raise ValueError(f"the checkpoint's model config differs from this run's: {'; '.join(differ)} "
                                 f"(resume with the config the checkpoint was trained with)")
        if meta:
            self.check_lora_resume(meta.get("lora"), checkpoint.get("state_dict", {}))

    def check_lora_resume(self, saved: dict[str, Any] | None, state: dict[str, Any]) -> None:
        """Resume a LoRA run only onto the same bases with the same adapters, and with every trained weight there."""
        ours = None if self.lora is None else {"config": self.lora.to_dict(), "bases": self.lora_bases}
        if (saved is None) != (ours is None):
            raise ValueError(f"the checkpoint was written {'with' if saved else 'without'} LoRA and this run is "
                             f"configured {'with' if ours else 'without'} it (resume with the checkpoint's config)")
        if saved is None:
            return
        if saved["config"] != ours["config"]:
            raise ValueError(f"the checkpoint's lora config {saved['config']} differs from this run's "
                             f"{ours['config']}")
        for prefix, base in saved["bases"].items():
            now = self.lora_bases.get(prefix, {})
            if now.get("sha256") != base["sha256"]:
                raise ValueError(f"the LoRA checkpoint's base for {prefix!r} ({base['source']}, sha256 "
                                 f"{base['sha256'][:12]}) differs from this run's ({now.get('source')}, sha256 "
                                 f"{str(now.get('sha256'))[:12]}): its adapters would be put on other weights")
        missing = [k for k in self.state_dict() if not self.is_frozen_base_key(k) and k not in state]
        if missing:
            raise ValueError(f"the LoRA checkpoint lacks trained weights of this run: {missing[:5]}")


def batch_seed(base_seed: int | None, rank: int, epoch: int, batch_idx: int) -> int:
    """A 63-bit seed mixed from its parts (no two batches of a run share one)."""
    digest = hashlib.blake2b(f"{base_seed}/{rank}/{epoch}/{batch_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: checkpoint X, this run Y` for every model-config field that differs."""
    return [f"{key}: checkpoint {saved.get(key)!r}, this run {current.get(key)!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def trainable_params(module: nn.Module) -> dict[str, float]:
    """`model/trainable_params` (what the optimizer updates) and `model/trainable_share` (of all the module's
    parameters; frozen reference and reward models are not the module's): 1.0 in full fine-tuning."""
    params = list(module.parameters())  # unique: tied weights count once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"model/trainable_params": trainable, "model/trainable_share": round(trainable / max(total, 1), 6)}
