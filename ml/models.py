"""The model registry: a name → constructor map carrying each model's study defaults.

`task1`, `net1` and `net2` are configs of the `custom` CNN builder, so that one
builder is the single definition of every CNN the study trained; the tests check
each preset layer by layer against the study's architecture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ml.config import ConfigError

NUM_CLASSES = 10
INPUT_SHAPE = (3, 32, 32)

REDUCED_FLOATS = (torch.bfloat16, torch.float16)


class ELU(nn.ELU):
    """`nn.ELU`, computed through `exp` for bf16/fp16 tensors on the CPU; elsewhere it is `nn.ELU`.

    torch's ELU computes the negative side with `expm1`. On the 2-core AVX512-BF16
    EPYC we train on, ATen's AVX-512 `expm1` ran at times as slow as scalar code:
    10 ms for net2's first ELU (64×32×32×32), 8× its `exp`, a fifth of a bf16
    step, and its speed moved with the host's state. Here the negative side is
    `exp(x) - 1` in fp32, then rounded to x's dtype: fp32's cancellation error near
    0 (about 1e-7 absolute) is far below bf16's rounding, so the result is torch's
    ELU bit for bit but for a few values near zero, which can differ by one unit in
    the last place (measured: 2 of 2 million net2 activations). fp32 keeps torch's
    ELU, whose `expm1` is exact there. The backward is torch's own, from the input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace or x.device.type != "cpu" or x.dtype not in REDUCED_FLOATS:
            return super().forward(x)
        return _ELUThroughExp.apply(x, self.alpha)


class _ELUThroughExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        ctx.save_for_backward(x)
        f = x.float()  # a copy: x is bf16 or fp16
        negative = f.clamp(max=0).exp_().sub_(1)  # e^x - 1 on the negative side, 0 elsewhere
        if alpha == 1:  # e^x - 1 >= x everywhere, so ELU is the larger of the two: one pass, no mask
            return torch.maximum(f, negative, out=negative).to(x.dtype)
        return negative.mul_(alpha).add_(f.clamp_(min=0)).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        # torch's own ELU backward from the input (it uses exp, not expm1): the same gradient as nn.ELU's.
        return torch.ops.aten.elu_backward(grad, ctx.alpha, 1, 1, False, x), None


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "elu": ELU,
    "leaky_relu": nn.LeakyReLU,
}
INITS = ("none", "linear", "all")
ORDERS = ("conv_act_bn", "conv_bn_act")
DOWNSAMPLES = ("maxpool", "stride")


@dataclass
class CNNConfig:
    """What the study varied across its CNNs."""

    filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    convs_per_block: int = 2
    kernel_size: int = 3
    batch_norm: bool = True
    # One dropout rate per block (a decreasing schedule is e.g. [0.5, 0.4, 0.3]), or one for all.
    dropout: list[float] | float = 0.0
    downsample: str = "maxpool"
    activation: str = "relu"
    hidden: list[int] = field(default_factory=lambda: [64])
    fc_activation: str | None = None  # defaults to `activation`
    init: str = "none"
    order: str = "conv_act_bn"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_rate(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_errors(cfg: CNNConfig) -> dict[str, str]:
    """Wrong JSON types, caught before the value checks compare them."""
    checks = {
        "filters": (isinstance(cfg.filters, list) and all(map(_is_int, cfg.filters)), "a list of whole numbers"),
        "convs_per_block": (_is_int(cfg.convs_per_block), "a whole number"),
        "kernel_size": (_is_int(cfg.kernel_size), "a whole number"),
        "batch_norm": (isinstance(cfg.batch_norm, bool), "true or false"),
        "dropout": (_is_rate(cfg.dropout) or (isinstance(cfg.dropout, list) and all(map(_is_rate, cfg.dropout))),
                    "a number or a list of numbers"),
        "hidden": (isinstance(cfg.hidden, list) and all(map(_is_int, cfg.hidden)), "a list of whole numbers"),
        # Names are looked up in tables: a list or a dict there would be a TypeError, not a message.
        **{name: (isinstance(getattr(cfg, name), str), "a name (text)")
           for name in ("downsample", "activation", "init", "order")},
        "fc_activation": (cfg.fc_activation is None or isinstance(cfg.fc_activation, str), "a name (text) or null"),
    }
    return {name: f"must be {expected}" for name, (ok, expected) in checks.items() if not ok}


def _errors(cfg: CNNConfig) -> dict[str, str]:
    errors = _type_errors(cfg)
    if errors:
        return errors
    if not cfg.filters or any(not isinstance(f, int) or f < 1 for f in cfg.filters):
        errors["filters"] = "must be a non-empty list of positive integers"
    elif len(cfg.filters) > 5:
        errors["filters"] = "at most 5 blocks: each halves the 32 px input"
    if cfg.convs_per_block not in (1, 2, 3):
        errors["convs_per_block"] = "must be one of 1, 2, 3"
    if cfg.kernel_size not in (3, 5):
        errors["kernel_size"] = "must be one of 3, 5"
    dropouts = cfg.dropout if isinstance(cfg.dropout, list) else [cfg.dropout]
    if any(not 0 <= p < 1 for p in dropouts):
        errors["dropout"] = "each rate must be in [0, 1)"
    elif isinstance(cfg.dropout, list) and len(cfg.dropout) != len(cfg.filters or []):
        errors["dropout"] = "give one rate per block, or a single rate"
    if cfg.downsample not in DOWNSAMPLES:
        errors["downsample"] = f"must be one of {', '.join(DOWNSAMPLES)}"
    for name in ("activation", "fc_activation"):
        value = getattr(cfg, name)
        if value is not None and value not in ACTIVATIONS:
            errors[name] = f"must be one of {', '.join(ACTIVATIONS)}"
    if any(not isinstance(h, int) or h < 1 for h in cfg.hidden):
        errors["hidden"] = "must be a list of positive integers"
    if cfg.init not in INITS:
        errors["init"] = f"must be one of {', '.join(INITS)}"
    if cfg.order not in ORDERS:
        errors["order"] = f"must be one of {', '.join(ORDERS)}"
    return errors


def cnn_config(options: dict[str, Any] | None) -> CNNConfig:
    """A validated CNNConfig from a dict; unknown keys and bad values raise ConfigError."""
    options = dict(options or {})
    names = [f.name for f in fields(CNNConfig)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError({k: f"unknown model option; valid options: {', '.join(names)}" for k in unknown})
    cfg = CNNConfig(**options)
    errors = _errors(cfg)
    if errors:
        raise ConfigError(errors)
    return cfg


MASK_BITS = 15  # random bits per dropout mask element: p is rounded to 1/2^15


class Dropout(nn.Dropout):
    """`nn.Dropout` with a cheaper mask on CPU; elsewhere, and in eval mode, it is `nn.Dropout`.

    On CPU, `bernoulli_` draws each element's mask through a slow serial path:
    5.3 ms for net2's first dropout (64×32×16×16), a tenth of a bf16 training step
    on a 2-core AVX512-BF16 EPYC. Here one 64-bit draw (63 random bits) serves four
    elements, 15 bits each, and an element is dropped when its bits are below
    p·2^15: the same Bernoulli mask with p rounded to 1/32768, at a fifth of the
    cost (forward and backward 1.1 ms against 5.6 ms). It draws from torch's default
    generator, so `torch.manual_seed` still fixes it. CUDA's dropout is already fused.

    The draws follow the tensor's logical (NCHW) order, not its memory order, so one
    seed gives the same mask at fp32 NCHW and at bf16 + channels_last: a same-seed
    comparison of two precisions then differs in its arithmetic alone. (Laid in
    memory order, the two masks agreed on only 50-58% of elements: chance.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or not 0 < self.p < 1 \
                or not _dense(x):
            return super().forward(x)
        keep = _keep_mask(x, self.p)
        if not x.is_contiguous():  # channels_last: lay the mask out like x, so the multiply runs over matching strides
            keep = keep.view(torch.uint8).contiguous(memory_format=torch.channels_last)  # as bytes: 2x faster than bool
        return x * keep.to(x.dtype).mul_(1 / (1 - self.p))



def _dense(x: torch.Tensor) -> bool:
    """Whether x is laid out in one of the two layouts (NCHW or channels_last) that the mask can take."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A contiguous bool tensor of x's shape, True with probability 1 - p (p rounded to 1/2^15).

    Element i of the draws goes to x's i-th element in logical order, whatever x's memory layout."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_()  # uniform over [0, 2^63): 63 random bits
    bits = words.view(torch.int16)[:n].bitwise_and_((1 << MASK_BITS) - 1)  # four 15-bit draws per word
    return (bits >= round(p * (1 << MASK_BITS))).view(x.shape)


class CNN(nn.Sequential):
    """A plain CNN: blocks of convolutions, then fully connected layers."""

    def __init__(self, cfg: CNNConfig):
        layers: list[nn.Module] = []
        channels, size = INPUT_SHAPE[0], INPUT_SHAPE[1]
        dropouts = cfg.dropout if isinstance(cfg.dropout, list) else [cfg.dropout] * len(cfg.filters)
        for width, p in zip(cfg.filters, dropouts):
            for i in range(cfg.convs_per_block):
                # With strided downsampling the block's last conv halves the size instead of a pool.
                stride = 2 if cfg.downsample == "stride" and i == cfg.convs_per_block - 1 else 1
                layers.append(nn.Conv2d(channels, width, cfg.kernel_size, stride=stride, padding=cfg.kernel_size // 2))
                act, norm = ACTIVATIONS[cfg.activation](), nn.BatchNorm2d(width) if cfg.batch_norm else None
                ordered = [act, norm] if cfg.order == "conv_act_bn" else [norm, act]
                layers.extend(m for m in ordered if m is not None)
                channels = width
            if cfg.downsample == "maxpool":
                layers.append(nn.MaxPool2d(2))
            size //= 2
            if p > 0:
                layers.append(Dropout(p))
        layers.append(nn.Flatten())
        features = channels * size * size
        fc_act = ACTIVATIONS[cfg.fc_activation or cfg.activation]
        for width in cfg.hidden:
            layers += [nn.Linear(features, width), fc_act()]
            features = width
        layers.append(nn.Linear(features, NUM_CLASSES))
        super().__init__(*layers)
        _init_weights(self, cfg.init)


def _init_weights(model: nn.Module, mode: str) -> None:
    """Xavier-uniform weights and 0.01 biases on Linear (and, for 'all', Conv2d) layers."""
    kinds = {"none": (), "linear": (nn.Linear,), "all": (nn.Linear, nn.Conv2d)}[mode]
    for m in model.modules():
        if isinstance(m, kinds):
            nn.init.xavier_uniform_(m.weight)
            nn.init.constant_(m.bias, 0.01)


# ---------------------------------------------------------------- resnet18 ---

class PretrainedWeightsMissing(RuntimeError):
    """Offline, with no cached ImageNet weights file."""


def resnet18_weights_path() -> Path:
    """Where torchvision's weights API caches ResNet18_Weights.IMAGENET1K_V1 (under TORCH_HOME)."""
    from torchvision.models import ResNet18_Weights

    filename = os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def load_resnet18_weights(allow_download: bool = False) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's weights API: from the cache, or downloaded when allowed."""
    from torchvision.models import ResNet18_Weights

    path = resnet18_weights_path()
    if not path.exists() and not allow_download:
        raise PretrainedWeightsMissing(
            f"resnet18 needs ImageNet weights, and none are cached: place the file {path.name} "
            f"in the folder {path.parent} (download it from {ResNet18_Weights.IMAGENET1K_V1.url}; "
            f"the folder follows TORCH_HOME), or train from scratch with pretrained=false."
        )
    try:
        return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False, weights_only=True)
    except OSError as err:  # URLError and friends: offline, or the host is unreachable
        raise PretrainedWeightsMissing(
            f"could not download {path.name} ({err}); place it in {path.parent}, or use pretrained=false"
        ) from err


class ResNet18Transfer(nn.Module):
    """torchvision's resnet18 with a 10-way head, fine-tuning only layer4 and fc.

    CIFAR's 32 px images are upsampled ×`upsample` inside forward, so that the
    ImageNet filters see objects at roughly the scale they were trained on.
    """

    def __init__(self, pretrained: bool = True, upsample: int = 8, allow_download: bool = False):
        super().__init__()
        from torchvision.models import resnet18

        self.upsample = upsample
        self.net = resnet18(weights=None)
        if pretrained:
            self.net.load_state_dict(load_resnet18_weights(allow_download))
        self.net.fc = nn.Linear(512, NUM_CLASSES)
        for name, param in self.net.named_parameters():
            param.requires_grad = name.startswith(("layer4.", "fc."))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample != 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return self.net(x)


# ---------------------------------------------------------------- registry ---

PRESET_CNNS: dict[str, dict[str, Any]] = {
    "task1": dict(filters=[32, 64, 128], convs_per_block=1, kernel_size=5, batch_norm=False,
                  dropout=0.0, activation="relu", hidden=[64], init="none"),
    "net1": dict(filters=[32, 64, 128], convs_per_block=2, kernel_size=3, batch_norm=True,
                 dropout=0.5, activation="relu", fc_activation="leaky_relu", hidden=[64],
                 init="linear", order="conv_act_bn"),
    "net2": dict(filters=[32, 64, 128], convs_per_block=2, kernel_size=5, batch_norm=True,
                 dropout=[0.5, 0.4, 0.3], activation="elu", hidden=[], init="linear",
                 order="conv_act_bn"),
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    title: str
    description: str
    build: Callable[[dict[str, Any], bool, bool], nn.Module]  # (options, pretrained, allow_download) -> model
    defaults: dict[str, Any]  # TrainConfig overrides: the study's hyperparameters


def _build_cnn(preset: str | None) -> Callable[[dict[str, Any], bool, bool], nn.Module]:
    def build(options: dict[str, Any], pretrained: bool, allow_download: bool) -> nn.Module:
        base = dict(PRESET_CNNS[preset]) if preset else {}
        return CNN(cnn_config({**base, **options}))
    return build


def _build_resnet18(options: dict[str, Any], pretrained: bool, allow_download: bool) -> nn.Module:
    allowed = {"upsample"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError({k: f"unknown resnet18 option; valid options: {', '.join(sorted(allowed))}" for k in unknown})
    if "upsample" in options and (not _is_int(options["upsample"]) or options["upsample"] < 1):
        raise ConfigError({"upsample": "must be a whole number of at least 1"})
    return ResNet18Transfer(pretrained=pretrained, allow_download=allow_download, **options)


_STUDY_SGD = dict(optimizer="sgd", momentum=0.0, batch_size=64, early_stop_count=4)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("task1", "Baseline CNN (task 1)",
                  "3 conv layers (k5) with max pooling, one hidden FC layer of 64",
                  _build_cnn("task1"), dict(_STUDY_SGD, lr=0.05, epochs=100, scheduler="none")),
        ModelSpec("net1", "Net 1: deeper CNN, batch norm, dropout 0.5",
                  "3 blocks of 2 conv (k3) + BN, dropout 0.5, FC 64 with LeakyReLU, Xavier on Linear",
                  _build_cnn("net1"), dict(_STUDY_SGD, lr=0.1, epochs=10, scheduler="exponential", gamma=0.95)),
        ModelSpec("net2", "Net 2: k5 ELU CNN, decreasing dropout",
                  "3 blocks of 2 conv (k5) + BN with ELU, dropout 0.5/0.4/0.3, no hidden FC",
                  _build_cnn("net2"), dict(_STUDY_SGD, lr=0.1, epochs=10, scheduler="multistep",
                                           milestones=[4, 8], gamma=0.5)),
        ModelSpec("resnet18", "ResNet18 transfer learning",
                  "ImageNet resnet18, layer4 and fc trained, input upsampled x8",
                  _build_resnet18, dict(optimizer="adam", lr=5e-4, batch_size=32, epochs=10,
                                        early_stop_count=4, scheduler="none")),
        ModelSpec("custom", "Custom CNN",
                  "The configurable CNN builder (model_options), starting from the net1 layout",
                  _build_cnn(None), dict(_STUDY_SGD, lr=0.05, epochs=10, scheduler="none")),
    ]
}


def get_spec(name: str) -> ModelSpec:
    """The registered model `name`; an unknown name raises ConfigError listing the valid ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError({"model": f"unknown model {name!r}; valid models: {', '.join(MODELS)}"}) from None


def build_model(name: str, options: dict[str, Any] | None = None, pretrained: bool = True,
                allow_download: bool = False) -> nn.Module:
    """Build the registered model `name` with its model options.

    `pretrained` and `allow_download` only matter to models with pretrained weights.
    """
    return get_spec(name).build(dict(options or {}), pretrained, allow_download)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
