"""SqueezeNet family, laid out like torchvision's ``squeezenet.py``.

State-dict keys of ``squeezenet1_0`` / ``squeezenet1_1`` are the same as torchvision's,
so weights move freely between the two. The bypass variants follow Section 6 of the
SqueezeNet paper; ``squeezenet_small`` keeps v1.1's fire modules but starts with a 3x3,
stride-1 stem so 32x32 inputs (the digits demo) still reach the last fire at 4x4.
The layer sizes are data in ``sqz.architectures`` (torch-free); this module builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import nn

from sqz.architectures import ARCHITECTURES, FINAL_CONV_IN, Bypass, ConvSpec, PoolSpec, Version, feature_plan
from sqz.architectures import list_models as _registered

__all__ = [
    "Fire",
    "SqueezeNet",
    "ModelFacts",
    "MODEL_FACTS",
    "ReferenceCNN",
    "REFERENCE_CNNS",
    "build_reference",
    "squeezenet1_0",
    "squeezenet1_1",
    "squeezenet1_0_simple_bypass",
    "squeezenet1_0_complex_bypass",
    "squeezenet_small",
    "build_model",
    "list_models",
    "count_parameters",
]

class Fire(nn.Module):
    def __init__(
        self,
        inplanes: int,
        squeeze_planes: int,
        expand1x1_planes: int,
        expand3x3_planes: int,
        bypass: Literal["none", "identity", "conv"] = "none",
    ) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.bypass_mode = bypass
        # The complex bypass needs a 1x1 conv where input and output channels differ;
        # it is the only extra parameter the paper's bypass variants add.
        self.bypass = (
            nn.Conv2d(inplanes, expand1x1_planes + expand3x3_planes, kernel_size=1)
            if bypass == "conv"
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.squeeze_activation(self.squeeze(x))
        out = torch.cat(
            [
                self.expand1x1_activation(self.expand1x1(squeezed)),
                self.expand3x3_activation(self.expand3x3(squeezed)),
            ],
            1,
        )  # (N, e1 + e3, H, W)
        if self.bypass_mode == "identity":
            out = out + x
        elif self.bypass is not None:
            out = out + self.bypass(x)
        return out


class SqueezeNet(nn.Module):
    def __init__(
        self,
        version: Version = "1_0",
        num_classes: int = 1000,
        dropout: float = 0.5,
        bypass: Bypass = "none",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        for item in feature_plan(version, bypass):  # the architecture as data (sqz.architectures)
            if isinstance(item, ConvSpec):
                layers.append(nn.Conv2d(item.in_channels, item.out_channels, kernel_size=item.kernel_size,
                                        stride=item.stride, padding=item.padding))  # fmt: skip
            elif item == "relu":
                layers.append(nn.ReLU(inplace=True))
            elif isinstance(item, PoolSpec):
                layers.append(nn.MaxPool2d(kernel_size=item.kernel_size, stride=item.stride, ceil_mode=item.ceil_mode))
            else:
                layers.append(Fire(item.inplanes, item.squeeze_planes, item.expand1x1_planes, item.expand3x3_planes,
                                   bypass=item.bypass))  # fmt: skip
        self.features = nn.Sequential(*layers)

        final_conv = nn.Conv2d(FINAL_CONV_IN, num_classes, kernel_size=1)
        # The published models put a ReLU on the class scores; from scratch on a tiny
        # dataset it kills whole classes (a class whose scores start negative never gets a
        # gradient), so the small variant uses an identity there. Keys and shapes match.
        final_activation = nn.Identity() if version == "small" else nn.ReLU(inplace=True)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), final_conv, final_activation, nn.AdaptiveAvgPool2d((1, 1))
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x)  # (N, num_classes, 1, 1)
        return torch.flatten(x, 1)


@dataclass(frozen=True)
class ModelFacts:
    """Facts kept beside the builders as data, like torchvision's weight metadata."""

    num_params_1000: int | None  # with the ImageNet 1000-class head
    input_size: int
    source: str
    # ImageNet top-1 / top-5 (%) as published for this architecture, and where.
    published_accuracy: tuple[float, float] | None = None
    accuracy_source: str = ""
    published_mb: float | None = None  # the size the paper prints, where it differs from ours


# Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB
# model size" (arXiv:1602.07360v4): Table 2 (v1.0) and Table 3 (Section 6, bypasses).
_PAPER = "SqueezeNet paper (arXiv:1602.07360)"

MODEL_FACTS: dict[str, ModelFacts] = {
    "squeezenet1_0": ModelFacts(1_248_424, 227, "SqueezeNet paper, Table 2 (v1.0)",
                                (57.5, 80.3), f"{_PAPER}, Table 2"),
    "squeezenet1_1": ModelFacts(1_235_496, 224, "SqueezeNet v1.1 release notes",
                                (58.178, 80.624), "torchvision SqueezeNet1_1_Weights.IMAGENET1K_V1"),
    "squeezenet1_0_simple_bypass": ModelFacts(1_248_424, 227, "SqueezeNet paper, Section 6",
                                              (60.4, 82.5), f"{_PAPER}, Table 3"),
    # The paper prints 7.7 MB; the 1x1 bypass convs around fire2/4/6/8 add 341,248
    # parameters to v1.0's, which is 6.36 MB as float32.
    "squeezenet1_0_complex_bypass": ModelFacts(1_589_672, 227, "SqueezeNet paper, Section 6",
                                               (58.8, 82.0), f"{_PAPER}, Table 3", published_mb=7.7),
    "squeezenet_small": ModelFacts(1_235_496, 32, "sqz: v1.1 fires, 3x3 stride-1 stem for 32x32"),
}  # fmt: skip


@dataclass(frozen=True)
class ReferenceCNN:
    """A CNN the paper compares against, as torchvision builds it (no weights loaded)."""

    label: str
    builder: str  # a torchvision.models builder
    options: dict[str, Any]  # passed to the builder
    note: str = ""


# GoogLeNet and Inception-v3 are counted as deployed: their auxiliary classifiers only feed
# the training loss (torchvision's own GoogLeNet weights drop them). Inception-v4 is not in
# torchvision, so it is not listed.
REFERENCE_CNNS: dict[str, ReferenceCNN] = {
    "alexnet": ReferenceCNN("AlexNet", "alexnet", {}, "torchvision's single-tower AlexNet"),
    "googlenet": ReferenceCNN("GoogLeNet", "googlenet", {"aux_logits": False, "init_weights": True},
                              "without its 2 auxiliary classifiers"),
    "resnet152": ReferenceCNN("ResNet-152", "resnet152", {}),
    "inception_v3": ReferenceCNN("Inception-v3", "inception_v3", {"aux_logits": False, "init_weights": True},
                                 "without its auxiliary classifier"),
}  # fmt: skip


def build_reference(name: str, *, with_aux: bool = False, device: str | torch.device = "meta") -> nn.Module:
    """A reference CNN from torchvision, without weights. On the default ``meta`` device
    it allocates nothing (enough to count parameters); ``with_aux`` keeps the auxiliary
    classifiers of GoogLeNet/Inception-v3."""
    import torchvision

    if name not in REFERENCE_CNNS:
        raise ValueError(f"reference: unknown CNN {name!r}; choose one of {', '.join(REFERENCE_CNNS)}")
    spec = REFERENCE_CNNS[name]
    options = dict(spec.options)
    if with_aux and "aux_logits" in options:
        options["aux_logits"] = True
    with torch.device(device):
        return getattr(torchvision.models, spec.builder)(weights=None, **options)


def _squeezenet(name: str, *, num_classes: int, dropout: float) -> SqueezeNet:
    spec = ARCHITECTURES[name]
    return SqueezeNet(version=spec.version, num_classes=num_classes, dropout=dropout, bypass=spec.bypass)


def squeezenet1_0(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    return _squeezenet("squeezenet1_0", num_classes=num_classes, dropout=dropout)


def squeezenet1_1(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    return _squeezenet("squeezenet1_1", num_classes=num_classes, dropout=dropout)


def squeezenet1_0_simple_bypass(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    return _squeezenet("squeezenet1_0_simple_bypass", num_classes=num_classes, dropout=dropout)


def squeezenet1_0_complex_bypass(*, num_classes: int = 1000, dropout: float = 0.5) -> SqueezeNet:
    return _squeezenet("squeezenet1_0_complex_bypass", num_classes=num_classes, dropout=dropout)


def squeezenet_small(*, num_classes: int = 10, dropout: float = 0.5) -> SqueezeNet:
    return _squeezenet("squeezenet_small", num_classes=num_classes, dropout=dropout)


# The public builders by registry name (sqz.architectures.ARCHITECTURES lists the names).
_BUILDERS: dict[str, Callable[..., SqueezeNet]] = {
    "squeezenet1_0": squeezenet1_0,
    "squeezenet1_1": squeezenet1_1,
    "squeezenet1_0_simple_bypass": squeezenet1_0_simple_bypass,
    "squeezenet1_0_complex_bypass": squeezenet1_0_complex_bypass,
    "squeezenet_small": squeezenet_small,
}
if sorted(_BUILDERS) != _registered():
    raise ImportError("sqz.models: every architecture in sqz.architectures needs a builder, and no other")

# A .sqz file names its architecture; decoding rebuilds it from these bounded options only,
# so a hostile header cannot ask for an arbitrarily large model.
_MAX_CLASSES = 100_000


def list_models() -> list[str]:
    return _registered()


def build_model(name: str, **kwargs: Any) -> SqueezeNet:
    """Build a registered model by name; unknown names and options are a ValueError."""
    if name not in _BUILDERS:
        raise ValueError(f"model: unknown model {name!r}; choose one of {', '.join(list_models())}")
    allowed = {"num_classes", "dropout"}
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(f"model: unknown options {sorted(unknown)} for {name}")
    num_classes = kwargs.get("num_classes")
    if num_classes is not None and not (isinstance(num_classes, int) and 2 <= num_classes <= _MAX_CLASSES):
        raise ValueError(f"num_classes: must be an integer in 2..{_MAX_CLASSES}, got {num_classes!r}")
    dropout = kwargs.get("dropout")
    if dropout is not None and not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout: must be in [0, 1), got {dropout!r}")
    model = _BUILDERS[name](**kwargs)
    # Recorded so a .sqz file can name how to rebuild this exact architecture.
    model.arch_spec = {"name": name, "kwargs": dict(kwargs)}
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
