"""What every stage module shares: the backbone under `self.model`, its tokenizer, the optimizer, and the
checkpoint metadata that lets later stages, `generate` and `export` load any checkpoint safely.

One thin base class, not a hierarchy: each stage adds only its step.
"""

import copy
import hashlib
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn

from lit_llm.checkpoint import META_KEY, LoadedModel, checkpoint_meta, load_backbone
from lit_llm.data.prompts import render_prompt
from lit_llm.data.tasks import Example, make_examples
from lit_llm.evaluation import gold_eval
from lit_llm.model import Transformer
from lit_llm.optim import OptimConfig, configure_adamw
from lit_llm.tokenizer import Tokenizer


class StageModule(pl.LightningModule):
    """Base of the stage modules.

    Subclasses set `stage`, build `self.model` (a `Transformer`) and `self.tokenizer`, and may set
    `parent_run_id` (the MLflow run that produced their starting weights) and `samples` (rows of sample
    generations that `SampleGenerations` logs as a table). Stages with a gold evaluation set `gold_eval_examples`,
    `gold_max_new_tokens`, `num_samples` (and optionally `gold_max_digits`, `gold_batch_size`) and call
    `run_gold_eval`; a stage whose model is not a chat model overrides `render_question` and `gold_stop_ids`.
    """

    stage: str = "base"

    def __init__(self, optim: OptimConfig | None = None) -> None:
        super().__init__()
        self.optim = optim or OptimConfig()
        self.model: Transformer | None = None
        self.tokenizer: Tokenizer | None = None
        self.parent_run_id: str | None = None
        self.samples: list[dict] = []
        self.gold_metric = torchmetrics.MeanMetric()  # syncs across ranks in compute()
        self.base_seed: int | None = None

    @property
    def flops_per_token(self) -> float | None:
        """Training FLOPs per token of the backbone (for MFU), None before the model exists."""
        return self.model.flops_per_token() if self.model is not None else None

    def load_starting_model(self, init_from: str, activation_checkpointing: bool = False) -> LoadedModel:
        """Load the stage's starting weights and tokenizer (`self.model`, `self.tokenizer`) from a checkpoint of
        any stage or a Hugging Face directory, and remember its MLflow run as this run's parent."""
        loaded = load_backbone(init_from)
        self.model, self.tokenizer, self.parent_run_id = loaded.model, loaded.tokenizer, loaded.run_id
        self.model.activation_checkpointing = activation_checkpointing
        self.model.train()  # an imported model comes in eval mode (for inference); a stage trains it (dropout on)
        return loaded

    # ------------------------------------------------------------------------------- frozen models
    def load_reference(self, ref_from: str | None) -> Transformer:
        """A frozen reference policy: a copy of the starting policy, or the backbone of `ref_from`."""
        if ref_from is None:
            return copy.deepcopy(self.model)
        loaded = load_backbone(ref_from)
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

    def mlflow_run_id(self) -> str | None:
        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger):
                return logger.run_id
        return None

    def configure_optimizers(self) -> dict:
        return configure_adamw(self, self.optim, int(self.trainer.estimated_stepping_batches))

    def setup(self, stage: str) -> None:
        """Record the data module's counts (examples, truncated, dropped...) as run params, when it keeps any."""
        datamodule = getattr(self.trainer, "datamodule", None)
        stats = getattr(datamodule, "stats", None)
        if not stats:
            return
        params = {f"data_stats.{split}.{k}": v for split, s in stats.items() for k, v in s.to_dict().items()}
        if getattr(datamodule, "chat_template_note", None):
            params["data_stats.chat_template"] = datamodule.chat_template_note
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def render_question(self, example: Example) -> list[int]:
        """A gold question as a chat: [the data module's system prompt], user = the question, assistant header."""
        system = getattr(getattr(self.trainer, "datamodule", None), "system_prompt", None)
        return render_prompt(self.tokenizer, example.prompt, system)

    def gold_stop_ids(self) -> list[int]:
        """Tokens that end a gold answer: the end of the assistant's turn."""
        return self.tokenizer.chat_stop_ids()

    def run_gold_eval(self, split: str = "val") -> None:
        """`<split>/gold_accuracy` on held-out task-world questions (val or test split), each rank answering its
        share; the first answers become the run's sample table."""
        examples = make_examples(self.gold_eval_examples, split=split, seed=0,
                                 max_digits=getattr(self, "gold_max_digits", 2))
        rank, world = self.global_rank, self.trainer.world_size
        rows = gold_eval(self.model, self.tokenizer, examples[rank::world], self.render_question,
                         self.gold_max_new_tokens, stop_ids=self.gold_stop_ids(),
                         batch_size=getattr(self, "gold_batch_size", 32))
        for row in rows:
            self.gold_metric.update(float(row["correct"]))
        self.log(f"{split}/gold_accuracy", self.gold_metric.compute())
        self.gold_metric.reset()
        self.samples = rows[: self.num_samples]

    # ------------------------------------------------------------------------------------- randomness
    def on_fit_start(self) -> None:
        self.base_seed = torch.initial_seed()  # the run's seed (seed_everything), before any per-batch reseeding

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


def batch_seed(base_seed: int | None, rank: int, epoch: int, batch_idx: int) -> int:
    """A 63-bit seed mixed from its parts (no two batches of a run share one)."""
    digest = hashlib.blake2b(f"{base_seed}/{rank}/{epoch}/{batch_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: checkpoint X, this run Y` for every model-config field that differs."""
    return [f"{key}: checkpoint {saved.get(key)!r}, this run {current.get(key)!r}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]
