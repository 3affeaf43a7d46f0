"""Training-only augmentation, named in YAML: per-sample image and time-series transforms, and MixUp / CutMix.

A datamodule's ``augment`` is a list of names, or of ``{name: ..., <argument>: ...}`` mappings::

    augment: [hflip, {name: rotation, degrees: 10}, {name: random_resized_crop, scale: [0.8, 1.0]}]
    mixup_alpha: 0.2

Images use torchvision.transforms.v2 with its semantics; time series use the small modules in
:mod:`datamodules.augment_series`. Only the training split is augmented: validation, test and predict
read the data unchanged. MixUp / CutMix (:class:`BatchMix`) act on whole batches and turn labels into
class probabilities ``(B, num_classes)``, which :class:`zoo.tasks.Classifier` learns from.

Images held in memory (Digits, MNIST, CIFAR) are augmented a batch at a time on the batch's device, each
sample with its own random parameters (:mod:`datamodules.augment_batch`), by every name but rand_augment,
trivial_augment and auto_augment, which have no batched version and stay per sample: so do the names
before them, keeping the order of the list.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from datamodules.augment_batch import BatchAugment, batch_twin
from datamodules.augment_series import Jitter, Scaling, Shift, TimeWarp
from zoo.errors import ConfigError, did_you_mean

AugmentSpec = Union[str, dict[str, Any]]
"""One augmentation in YAML: its name, or a mapping of ``name`` and its arguments."""


def _v2() -> Any:
    from torchvision.transforms import v2  # imported when an image augmentation is built, not with the zoo

    return v2


# --- image augmentations: torchvision.transforms.v2, on raw pixels unless marked ---------------------
# Each builder's keyword arguments are what YAML may set; ``image`` (its (H, W) size and channels) is
# given by the datamodule. Crops keep the image's own size, so the model's input shape never changes.
class ImageInfo(NamedTuple):
    """What an image augmentation needs to know about the images it will see."""

    size: tuple[int, int]
    channels: int


def _hflip(p: float = 0.5) -> Any:
    return _v2().RandomHorizontalFlip(p)


def _vflip(p: float = 0.5) -> Any:
    return _v2().RandomVerticalFlip(p)


def _rotation(degrees: Union[float, list[float]] = 15.0) -> Any:
    return _v2().RandomRotation(degrees)


def _random_resized_crop(
    image: ImageInfo, scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3)
) -> Any:
    return _v2().RandomResizedCrop(image.size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)


def _random_crop(image: ImageInfo, padding: Optional[int] = None, padding_mode: str = "constant") -> Any:
    # Without padding a crop of the image's own size is the image; an eighth of the side is CIFAR's 4 of 32.
    padding = max(1, min(image.size) // 8) if padding is None else padding
    return _v2().RandomCrop(image.size, padding=padding, padding_mode=padding_mode)


def _color_jitter(
    image: ImageInfo,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: Optional[float] = None,
    hue: float = 0.0,
) -> Any:
    if image.channels == 1 and (saturation or hue):
        # torchvision silently leaves grey images alone here; a setting that does nothing should not pass unseen.
        raise ValueError("saturation and hue change colours, but these images are grey (1 channel): leave them out")
    saturation = (0.4 if image.channels == 3 else 0.0) if saturation is None else saturation
    return _v2().ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)


def _rand_augment(num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31) -> Any:
    return _v2().RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_magnitude_bins)


def _trivial_augment(num_magnitude_bins: int = 31) -> Any:
    return _v2().TrivialAugmentWide(num_magnitude_bins=num_magnitude_bins)


def _auto_augment(policy: str = "imagenet") -> Any:
    if policy not in ("imagenet", "cifar10", "svhn"):
        raise ValueError(f"policy={policy!r} must be one of the policies learnt on imagenet, cifar10, svhn")
    v2 = _v2()
    return v2.AutoAugment(v2.AutoAugmentPolicy(policy))


def _random_erasing(
    p: float = 0.5,
    scale: Sequence[float] = (0.02, 0.33),
    ratio: Sequence[float] = (0.3, 3.3),
    value: Union[float, str] = 0.0,
) -> Any:
    return _v2().RandomErasing(p=p, scale=tuple(scale), ratio=tuple(ratio), value=value)


IMAGE_AUGMENTS: dict[str, Callable[..., Any]] = {
    "hflip": _hflip,
    "vflip": _vflip,
    "rotation": _rotation,
    "random_resized_crop": _random_resized_crop,
    "random_crop": _random_crop,
    "color_jitter": _color_jitter,
    "rand_augment": _rand_augment,
    "trivial_augment": _trivial_augment,
    "auto_augment": _auto_augment,
    "random_erasing": _random_erasing,
}
# Random erasing runs on the normalised image, as in torchvision's and timm's recipes: its value 0 is then
# the mean colour and "random" is noise of the data's own spread. Every other image augmentation needs raw
# pixels (colour ops assume uint8 0-255 or floats in [0, 1]; rotations and crops fill with black).
AFTER_NORMALISATION = {"random_erasing"}

SERIES_AUGMENTS: dict[str, Callable[..., Any]] = {
    "jitter": Jitter,
    "scaling": Scaling,
    "shift": Shift,
    "time_warp": TimeWarp,
}


# --- from YAML to transforms ----------------------------------------------------------------------------
def _arguments(builder: Callable[..., Any]) -> list[str]:
    """The keyword arguments YAML may give a builder (``image`` comes from the datamodule)."""
    return [name for name in inspect.signature(builder).parameters if name not in ("self", "image")]


def _parse(spec: AugmentSpec, known: dict[str, Callable[..., Any]], owner: str) -> tuple[str, dict[str, Any]]:
    """``(name, arguments)`` of one YAML entry, checked against the names and arguments ``owner`` takes."""
    if isinstance(spec, str):
        name, args = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, args = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(
            f"data.augment entry {spec!r}: each entry is a name (hflip) or a mapping with a name "
            "({name: rotation, degrees: 10})"
        )
    if name not in known:
        other = "an image" if name in IMAGE_AUGMENTS else "a time-series" if name in SERIES_AUGMENTS else ""
        why = f"{name!r} is {other} augmentation" if other else f"unknown augmentation {name!r}"
        hint = "" if other else did_you_mean(name, known)
        raise ConfigError(f"data.augment: {why}; {owner} takes {', '.join(known)}.{hint}")
    accepted = _arguments(known[name])
    for key in args:
        if key not in accepted:
            takes = f"takes {', '.join(accepted)}" if accepted else "takes no arguments"
            hint = did_you_mean(key, accepted)
            raise ConfigError(f"data.augment: {name} has no argument {key!r}; it {takes}.{hint}")
    return name, args


def _build(name: str, args: dict[str, Any], builder: Callable[..., Any], image: Optional[ImageInfo]) -> Any:
    if "image" in inspect.signature(builder).parameters:
        args = {**args, "image": image}
    try:
        return builder(**args)
    except (ValueError, TypeError) as err:  # torchvision's and our own checks of the values
        shown = {k: v for k, v in args.items() if k != "image"}
        raise ConfigError(f"data.augment: {name}{f' {shown}' if shown else ''}: {err}") from None


class ImageAugment(NamedTuple):
    """A training split's image augmentations: per sample, in the two places they belong around normalisation,
    then per batch (:meth:`batched`)."""

    before_normalise: Optional[Callable[[torch.Tensor], torch.Tensor]]  # raw pixels: uint8, or floats in [0, 1]
    after_normalise: Optional[Callable[[torch.Tensor], torch.Tensor]]
    per_batch: tuple[Any, ...] = ()  # batched twins (datamodules.augment_batch) of the last augmentations
    size: tuple[int, int] = (0, 0)  # (H, W) of the images as stored

    def batched(self, mean: Sequence[float], std: Sequence[float]) -> Optional[BatchAugment]:
        """The per-batch augmentations of batches normalised by ``mean`` and ``std`` (from pixels in [0, 1]), or
        None where every augmentation runs per sample."""
        return BatchAugment(self.per_batch, self.size, mean, std) if self.per_batch else None

    @property
    def per_sample(self) -> bool:
        """Whether some augmentations run per sample (those before the last one without a batched version)."""
        return self.before_normalise is not None or self.after_normalise is not None

    def around(self, normalise: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """One transform: the raw-pixel augmentations, ``normalise``, then the normalised-image ones."""
        steps = [self.before_normalise, normalise, self.after_normalise]
        return _v2().Compose([s for s in steps if s is not None])


def build_image_augment(
    specs: Sequence[AugmentSpec],
    size: Sequence[int],
    channels: int,
    owner: str,
    per_batch: bool = False,
    sample_channels: Optional[int] = None,
) -> Optional[ImageAugment]:
    """The image augmentations ``specs`` name, for images of ``size`` (H, W) and ``channels`` as stored.

    With ``per_batch``, every augmentation after the last one without a batched version runs per batch
    (:meth:`ImageAugment.batched`); they run in the order they would per sample: raw-pixel ones in the order
    given, then the normalised-image ones. ``sample_channels``: the channels of the samples, where they differ
    from the stored ones; colour jitter of colour images made grey stays per sample (its saturation and hue
    act on the colours).

    Raises ConfigError naming an unknown augmentation or argument (with close matches) or a bad value.
    Returns None when ``specs`` is empty, so an unaugmented datamodule reads its data exactly as before.
    """
    if not specs:
        return None
    image = ImageInfo((int(size[0]), int(size[1])), channels)
    built = []  # (name, transform), in the order they act: raw pixels first, then the normalised image
    for spec in specs:
        name, args = _parse(spec, IMAGE_AUGMENTS, owner)
        built.append((name, _build(name, args, IMAGE_AUGMENTS[name], image)))
    built.sort(key=lambda b: b[0] in AFTER_NORMALISATION)  # stable: keeps the given order within each place
    twins = [batch_twin(t, image.size) if per_batch else None for _, t in built]
    if sample_channels is not None and sample_channels < channels:
        twins = [None if name == "color_jitter" else twin for (name, _), twin in zip(built, twins)]
    split = max((k + 1 for k, twin in enumerate(twins) if twin is None), default=0)  # per sample up to here
    before = [t for name, t in built[:split] if name not in AFTER_NORMALISATION]
    after = [t for name, t in built[:split] if name in AFTER_NORMALISATION]
    v2 = _v2()
    return ImageAugment(
        v2.Compose(before) if before else None, v2.Compose(after) if after else None, tuple(twins[split:]), image.size
    )


def build_series_augment(specs: Sequence[AugmentSpec], owner: str) -> Optional[nn.Module]:
    """The time-series augmentations ``specs`` name, applied in order to one ``(T, C)`` series; None if none."""
    if not specs:
        return None
    steps = []
    for spec in specs:
        name, args = _parse(spec, SERIES_AUGMENTS, owner)
        steps.append(_build(name, args, SERIES_AUGMENTS[name], None))
    return nn.Sequential(*steps)


class Augmented(Dataset):
    """A training split whose inputs pass through ``transform`` each time a sample is read (labels untouched)."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        x, y = self.dataset[i]
        return self.transform(x), y


# --- MixUp / CutMix ---------------------------------------------------------------------------------------
def check_mix(mixup_alpha: float, cutmix_alpha: float, mix_prob: float) -> None:
    """ConfigError for MixUp / CutMix settings out of range."""
    for key, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
        if value < 0:
            raise ConfigError(f"data.{key}={value} must be >= 0 (0 turns it off; 0.2-1.0 is usual)")
    if not 0.0 <= mix_prob <= 1.0:
        raise ConfigError(f"data.mix_prob={mix_prob} must be a probability in [0, 1]")


class BatchMix:
    """MixUp and CutMix of a training batch, as in timm's ``Mixup``: labels become class probabilities.

    Each batch is mixed with probability ``prob``; with both alphas set, CutMix is picked with probability
    ``switch_prob``, else MixUp. One ``lam ~ Beta(alpha, alpha)`` per batch; sample ``i`` is mixed with
    sample ``i - 1`` (torchvision's pairing; the loader has shuffled). CutMix's ``lam`` is corrected to the
    area actually pasted after the box is clipped at the border. Unmixed batches get one-hot probabilities,
    so every training batch has the same kind of target.

    Inputs are images ``(B, C, H, W)`` or any float tensor ``(B, ...)`` (MixUp only), or a padded sequence
    batch ``{"x": (B, T, C), "mask": (B, T)}`` (MixUp only): the mixed series is as long as the longer of the
    two, where the shorter one contributes its padding (0, the channel mean after per-channel normalisation).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
    ) -> None:
        check_mix(mixup_alpha, cutmix_alpha, prob)
        self.num_classes = num_classes
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    def __call__(self, batch: tuple[Any, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        x, y = batch
        target = F.one_hot(y.long(), self.num_classes).float()  # (B, num_classes)
        if self.mixup_alpha == self.cutmix_alpha == 0 or float(torch.rand(())) >= self.prob:
            return x, target
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or float(torch.rand(())) < self.switch_prob)
        alpha = torch.tensor(self.cutmix_alpha if cutmix else self.mixup_alpha)
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        x, lam = _cutmix(x, lam) if cutmix else (_mixup(x, lam), lam)
        return x, lam * target + (1.0 - lam) * target.roll(1, 0)


def _mixup(x: Any, lam: float) -> Any:
    if isinstance(x, dict):  # a padded sequence batch: mix the values, keep every real step of either series
        return {**x, "x": _mixup(x["x"], lam), "mask": x["mask"] | x["mask"].roll(1, 0)}
    return lam * x + (1.0 - lam) * x.roll(1, 0)


def _cutmix(x: Any, lam: float) -> tuple[torch.Tensor, float]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ConfigError("data.cutmix_alpha pastes boxes between images (B, C, H, W); use mixup_alpha for this data")
    height, width = x.shape[-2:]
    # A box of (1 - lam) of the area at a uniform centre, clipped at the border (torchvision's CutMix).
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    half = 0.5 * math.sqrt(1.0 - lam)
    half_h, half_w = int(half * height), int(half * width)
    y1, y2 = max(cy - half_h, 0), min(cy + half_h, height)
    x1, x2 = max(cx - half_w, 0), min(cx + half_w, width)
    mixed = x.clone()
    mixed[..., y1:y2, x1:x2] = x.roll(1, 0)[..., y1:y2, x1:x2]
    return mixed, 1.0 - (y2 - y1) * (x2 - x1) / (height * width)
