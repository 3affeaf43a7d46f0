"""Fine-tuning schedules: which layer groups train at each epoch, and at what learning rate.

One callback, :class:`FineTuning`, does feature extraction, full fine-tuning, freeze-then-unfreeze,
progressive (ULMFiT-style gradual) unfreezing and explicit milestones, with discriminative learning
rates (a backbone / head ratio and a per-group decay) and a BatchNorm policy for frozen groups.

It is built to survive what breaks the usual implementations:

- The optimizer is built once by the task with every layer group present. Freezing sets
  ``requires_grad=False`` (no gradient, so no update, no weight decay and no momentum for that group);
  unfreezing flips the flags back. The group layout never changes, so LR schedulers, checkpoint
  resume and DDP always see the same groups.
- Which groups train is a pure function of the epoch, applied at every epoch start, so a resumed run
  trains exactly what the uninterrupted run would (Lightning's BackboneFinetuning re-freezes after a
  resume, #21901).
- The LR multipliers are written into the optimizer groups and the schedulers' base LRs once, and each
  group remembers its multiplier (``lr_scale``), so applying them again (after a resume restored
  scaled values) changes nothing.
- Under DDP, a schedule that unfreezes later needs every parameter registered with the reducer at
  wrap time: the callback turns on ``find_unused_parameters`` for it and freezes after wrapping.

In an epoch where every backbone group is frozen (with ``bn_mode: eval``) the backbone is a fixed feature
extractor and runs as at inference, dropout off too (Keras's ``base_model(x, training=False)``): its features
are then a function of the input alone, which :class:`zoo.callbacks.FeatureCache` relies on to compute them once.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Optional, get_args

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from zoo.compat import SCHEDULER_LR_LISTS, BatchNormBase, ddp_kwargs, inner_schedulers
from zoo.errors import ConfigError
from zoo.tasks.base import NO_DECAY

log = logging.getLogger(__name__)

Strategy = Literal["full", "feature_extraction", "freeze_then_unfreeze", "progressive", "milestones"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)


class FineTuning(Callback):
    """Freeze, unfreeze and scale the learning rate of the task's layer groups on a schedule.

    The task's ``named_layer_groups()`` gives the backbone's groups from stem to top, then ``head``; the
    head always trains. ``depth`` below counts backbone groups from the top (0 = the one under the head).

    Args:
        strategy: ``full`` (everything trains), ``feature_extraction`` (backbone frozen, head trains),
            ``freeze_then_unfreeze`` (backbone frozen until ``unfreeze_epoch``, then all of it trains),
            ``progressive`` (one more backbone group from the top at ``unfreeze_epoch``, then every
            ``unfreeze_every`` epochs) or ``milestones`` (``{epoch: number of top backbone groups}``).
        unfreeze_epoch: first epoch (0-based) at which backbone groups train, for
            ``freeze_then_unfreeze`` and ``progressive``.
        unfreeze_every: epochs between two unfreezes for ``progressive``.
        milestones: for ``milestones``: from each epoch on, how many backbone groups from the top
            train (``-1``: all), e.g. ``{0: 0, 2: 1, 4: -1}``.
        backbone_lr_ratio: backbone LR / head LR (discriminative learning rates), in ``(0, 1]``.
        layer_lr_decay: multiplies the LR once more for each group below the top one (layer-wise LR
            decay: the stem learns slowest), in ``(0, 1]``.
        bn_mode: BatchNorm in frozen groups: ``eval`` keeps running statistics and affine parameters
            frozen (Keras semantics); ``train`` keeps updating statistics and training the affine
            parameters (fastai semantics). Held after every ``.train()`` call. With ``eval``, an epoch that
            freezes every backbone group runs the whole backbone in eval mode (dropout off): a fixed feature
            extractor (:meth:`extracts_features_at`).
    """

    def __init__(
        self,
        strategy: Strategy = "full",
        unfreeze_epoch: int = 1,
        unfreeze_every: int = 1,
        milestones: Optional[dict[int, int]] = None,
        backbone_lr_ratio: float = 1.0,
        layer_lr_decay: float = 1.0,
        bn_mode: Literal["eval", "train"] = "eval",
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"finetuning.strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")
        if unfreeze_epoch < 0 or unfreeze_every < 1:
            raise ConfigError(
                f"finetuning.unfreeze_epoch={unfreeze_epoch} must be >= 0 and "
                f"finetuning.unfreeze_every={unfreeze_every} >= 1"
            )
        if strategy == "milestones" and not milestones:
            raise ConfigError("finetuning.strategy=milestones needs finetuning.milestones, e.g. {0: 0, 2: 1, 4: -1}")
        for name, value in (("backbone_lr_ratio", backbone_lr_ratio), ("layer_lr_decay", layer_lr_decay)):
            if not 0.0 < value <= 1.0:
                raise ConfigError(
                    f"finetuning.{name}={value} must be in (0, 1]; freeze groups with the strategy, not a zero LR"
                )
        if bn_mode not in ("eval", "train"):
            raise ConfigError(f"finetuning.bn_mode={bn_mode!r} must be 'eval' or 'train'")
        self.strategy = strategy
        self.unfreeze_epoch = unfreeze_epoch
        self.unfreeze_every = unfreeze_every
        self.milestones = {int(k): int(v) for k, v in (milestones or {}).items()}
        self.backbone_lr_ratio = backbone_lr_ratio
        self.layer_lr_decay = layer_lr_decay
        self.bn_mode = bn_mode
        self.trainable: list[str] = []  # backbone groups training in the current epoch (saved in checkpoints)
        self._groups: dict[str, nn.Module] = {}
        self._frozen_norms: set[int] = set()
        self._hooked = False
        self._modes_before_eval: dict[nn.Module, bool] = {}  # the backbone's modules' modes while it is held in eval

    # --- the schedule: a pure function of the epoch ---------------------------------------------
    @property
    def changes_during_fit(self) -> bool:
        """Whether the set of training groups changes between epochs."""
        return self.strategy in ("freeze_then_unfreeze", "progressive", "milestones")

    def num_trainable(self, epoch: int, num_groups: int) -> int:
        """How many backbone groups, counted from the top, train in ``epoch``."""
        if self.strategy == "full":
            count = num_groups
        elif self.strategy == "feature_extraction":
            count = 0
        elif self.strategy == "freeze_then_unfreeze":
            count = num_groups if epoch >= self.unfreeze_epoch else 0
        elif self.strategy == "progressive":
            count = 0 if epoch < self.unfreeze_epoch else 1 + (epoch - self.unfreeze_epoch) // self.unfreeze_every
        else:
            reached = [e for e in self.milestones if e <= epoch]
            count = self.milestones[max(reached)] if reached else 0
            count = num_groups if count < 0 else count
        return min(count, num_groups)

    def trainable_at(self, epoch: int, backbone_groups: list[str]) -> list[str]:
        """The backbone groups (names, stem to top) that train in ``epoch``."""
        count = self.num_trainable(epoch, len(backbone_groups))
        return backbone_groups[len(backbone_groups) - count :] if count else []

    def extracts_features_at(self, epoch: int) -> bool:
        """Whether the backbone is a fixed feature extractor in ``epoch``: every group frozen, norms included
        (``bn_mode: eval``), and the whole backbone run in eval mode (no dropout). Needs :meth:`setup` to have run."""
        names = self.backbone_groups()
        return (
            self.strategy != "full" and self.bn_mode == "eval" and bool(names) and not self.trainable_at(epoch, names)
        )

    def lr_multiplier(self, group: str, backbone_groups: list[str]) -> float:
        """The LR multiplier of a layer group (or of an optimizer group named after one)."""
        group = group.removesuffix(NO_DECAY)
        if group not in backbone_groups:
            return 1.0  # the head, or a group this schedule does not know
        depth = len(backbone_groups) - 1 - backbone_groups.index(group)
        return self.backbone_lr_ratio * self.layer_lr_decay**depth

    # --- hooks ------------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not hasattr(pl_module, "named_layer_groups"):
            raise ConfigError(
                f"FineTuning needs a zoo task with named_layer_groups(); {type(pl_module).__name__} has none"
            )
        self._groups = dict(pl_module.named_layer_groups())
        if self.changes_during_fit:
            _register_all_parameters_with_ddp(trainer)
        else:
            # A fixed set can be frozen before DDP wraps the model, so the reducer never waits for it.
            self._apply(trainer, pl_module, epoch=0, announce=False)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._scale_learning_rates(trainer)
        self._apply(trainer, pl_module, trainer.current_epoch, announce=False)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After a resume the optimizer and schedulers hold the checkpoint's (already scaled) values; this
        # is a no-op then, and scales correctly if the user changed the ratios for the resumed run.
        self._scale_learning_rates(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply(trainer, pl_module, trainer.current_epoch, announce=True)
        # Here, not in setup or on_fit_start: Lightning warns of modules left in eval mode when training starts.
        self._hold_in_eval(pl_module, self.extracts_features_at(trainer.current_epoch))
        pl_module.log(
            "finetune/trainable_groups", float(len(self.trainable)), on_step=False, on_epoch=True, rank_zero_only=True
        )  # the same on every process

    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "trainable": list(self.trainable)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("strategy") not in (None, self.strategy):
            log.warning(
                "the checkpoint was trained with finetuning.strategy=%s; resuming with %s",
                state_dict["strategy"],
                self.strategy,
            )
        self.trainable = list(state_dict.get("trainable", []))

    # --- freezing ---------------------------------------------------------------------------------
    def backbone_groups(self) -> list[str]:
        return [name for name in self._groups if name.startswith("backbone.")]

    def _apply(self, trainer: Trainer, pl_module: LightningModule, epoch: int, announce: bool) -> None:
        names = self.backbone_groups()
        trainable = self.trainable_at(epoch, names)
        if self.strategy == "full":  # leaves the backbone's own requires_grad choices alone
            self.trainable = trainable
            return
        newly = [n for n in trainable if n not in self.trainable]
        frozen_norms: set[int] = set()
        for name in names:
            train = name in trainable
            module = self._groups[name]
            for param in module.parameters():
                param.requires_grad_(train)
            if not train:
                norms = [m for m in module.modules() if isinstance(m, BatchNormBase)]
                if self.bn_mode == "train":
                    for norm in norms:  # fastai: frozen groups still train their norms' affine parameters
                        for param in norm.parameters(recurse=False):
                            param.requires_grad_(True)
                else:
                    frozen_norms.update(id(m) for m in norms)
        self._frozen_norms = frozen_norms
        self._hook_norms(pl_module)
        if announce and newly:
            counts = ", ".join(f"{n} ({_count(self._groups[n]):,} parameters)" for n in newly)
            rank_zero_info(f"FineTuning: epoch {epoch}: unfroze {counts}")
        self.trainable = trainable

    def _hold_in_eval(self, pl_module: LightningModule, hold: bool) -> None:
        """Put the backbone in eval mode for an epoch that freezes all of it, and give each of its modules its own
        mode back in the first epoch that trains a group. Lightning restores the modes it finds around each
        validation, so the mode holds for the epoch."""
        modules = [m for name in self.backbone_groups() for m in self._groups[name].modules()]
        backbone = getattr(pl_module, "backbone", None)
        if isinstance(backbone, nn.Module):  # modules outside every group (a dropout the backbone calls last)
            modules += list(backbone.modules())
        if hold:
            for module in modules:
                self._modes_before_eval.setdefault(module, module.training)
                module.training = False
        else:
            for module, mode in self._modes_before_eval.items():
                module.training = mode
            self._modes_before_eval = {}

    def _hook_norms(self, pl_module: LightningModule) -> None:
        # Lightning switches modes at every epoch start and around each validation (restoring each module's
        # recorded mode). Rather than fight that, a frozen norm runs each forward in eval mode and gets its
        # own mode back afterwards, whatever .train()/.eval() calls happen in between.
        if self._hooked or not self._frozen_norms:
            return
        for module in pl_module.modules():
            if isinstance(module, BatchNormBase):
                module.register_forward_pre_hook(self._norm_pre_forward)
                module.register_forward_hook(self._norm_post_forward)
        self._hooked = True

    def _norm_pre_forward(self, module: nn.Module, args: Any) -> None:
        if id(module) in self._frozen_norms:
            module._zoo_training = module.training
            module.training = False

    def _norm_post_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        if hasattr(module, "_zoo_training"):
            module.training = module.__dict__.pop("_zoo_training")

    # --- discriminative learning rates ------------------------------------------------------------
    def _scale_learning_rates(self, trainer: Trainer) -> None:
        names = self.backbone_groups()
        for optimizer in trainer.optimizers:
            ratios = []
            for group in optimizer.param_groups:
                target = self.lr_multiplier(group.get("name", ""), names)
                ratio = target / group.get("lr_scale", 1.0)
                group["lr_scale"] = target
                ratios.append(ratio)
                for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                    if key in group:
                        group[key] *= ratio
            if any(r != 1.0 for r in ratios):
                for config in trainer.lr_scheduler_configs:
                    if config.scheduler.optimizer is optimizer:
                        _scale_scheduler(config.scheduler, ratios)


def _scale_scheduler(scheduler: Any, ratios: list[float]) -> None:
    """Multiply a scheduler's per-group base values, so its schedule runs at each group's scaled LR."""
    for attr in SCHEDULER_LR_LISTS:
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) == len(ratios):
            setattr(scheduler, attr, [v * r for v, r in zip(values, ratios)])
    for inner in inner_schedulers(scheduler):  # SequentialLR, ChainedScheduler
        _scale_scheduler(inner, ratios)


def _register_all_parameters_with_ddp(trainer: Trainer) -> None:
    from lightning.pytorch.strategies import DDPStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and not ddp_kwargs(strategy).get("find_unused_parameters"):
        # DDP only all-reduces parameters that required grad when it wrapped the model: unfreezing a group
        # later must find it registered, and the reducer must not wait for it while it is frozen.
        ddp_kwargs(strategy)["find_unused_parameters"] = True
        rank_zero_info(
            "FineTuning: DDP runs with find_unused_parameters=True, so groups unfrozen later are synchronised"
        )


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_schedule(
    callback: FineTuning, groups: dict[str, nn.Module], epochs: int
) -> list[tuple[str, int, float, list[bool]]]:
    """Per layer group: name, parameter count, LR multiplier, and whether it trains in each epoch.

    What ``zoo groups`` prints; the head is always trainable.
    """
    names = [n for n in groups if n.startswith("backbone.")]
    rows = []
    for name, module in groups.items():
        trains = [name not in names or name in callback.trainable_at(e, names) for e in range(epochs)]
        rows.append((name, _count(module), callback.lr_multiplier(name, names), trains))
    return rows
