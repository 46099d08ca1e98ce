"""The SqueezeNet family as data: stems, fire plans, pools, the bypass rule, the final
conv. ``sqz.models`` builds its torch modules from these; this module imports no torch,
so the CLI can answer questions about a model (its layers' sizes, the lowest density a
sweep of it accepts) in the time its own imports take.

Each registered model is a ``SqueezeNetSpec`` (version + bypass); ``feature_plan`` lists
its ``features`` block item by item, in the order (and so with the indices) the built
model's state-dict keys use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Literal

__all__ = [
    "Bypass",
    "Version",
    "ConvSpec",
    "PoolSpec",
    "FireSpec",
    "SqueezeNetSpec",
    "ARCHITECTURES",
    "FINAL_CONV_IN",
    "FINAL_CONV_KEY",
    "fire_bypass",
    "list_models",
    "check_model_name",
    "feature_plan",
    "prunable_weight_counts",
    "smallest_density",
    "check_densities",
    "check_sweep_densities",
]

Bypass = Literal["none", "simple", "complex"]
Version = Literal["1_0", "1_1", "small"]


@dataclass(frozen=True)
class ConvSpec:
    """A Conv2d (followed by a ReLU in the stem)."""

    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0

    @property
    def weights(self) -> int:
        return self.out_channels * self.in_channels * self.kernel_size * self.kernel_size


@dataclass(frozen=True)
class PoolSpec:
    kernel_size: int
    stride: int
    ceil_mode: bool = False


@dataclass(frozen=True)
class FireSpec:
    """A fire module: squeeze 1x1, then expand 1x1 and 3x3 side by side; ``bypass`` is
    "identity" (add the input), "conv" (add a 1x1 conv of it) or "none"."""

    inplanes: int
    squeeze_planes: int
    expand1x1_planes: int
    expand3x3_planes: int
    bypass: Literal["none", "identity", "conv"] = "none"

    def convs(self) -> dict[str, ConvSpec]:
        """The module's convs by attribute name, in the order the module registers them."""
        out = self.expand1x1_planes + self.expand3x3_planes
        convs = {
            "squeeze": ConvSpec(self.inplanes, self.squeeze_planes, 1),
            "expand1x1": ConvSpec(self.squeeze_planes, self.expand1x1_planes, 1),
            "expand3x3": ConvSpec(self.squeeze_planes, self.expand3x3_planes, 3, padding=1),
        }
        if self.bypass == "conv":
            convs["bypass"] = ConvSpec(self.inplanes, out, 1)
        return convs


# Fire module sizes (in, squeeze, expand1x1, expand3x3); "M" is a max-pool.
_V1_0_FIRES = [
    (96, 16, 64, 64), (128, 16, 64, 64), (128, 32, 128, 128), "M",
    (256, 32, 128, 128), (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), "M",
    (512, 64, 256, 256),
]  # fmt: skip
_V1_1_FIRES = [
    (64, 16, 64, 64), (128, 16, 64, 64), "M",
    (128, 32, 128, 128), (256, 32, 128, 128), "M",
    (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), (512, 64, 256, 256),
]  # fmt: skip

# Per version: the stem conv, the fire plan, and the max-pool used after the stem and at
# each "M". The small variant keeps v1.1's fires behind a 3x3 stride-1 stem and 2x2 pools,
# so 32x32 inputs still reach the last fire at 4x4.
_VERSIONS: dict[str, tuple[ConvSpec, list, PoolSpec]] = {
    "1_0": (ConvSpec(3, 96, 7, stride=2), _V1_0_FIRES, PoolSpec(3, 2, ceil_mode=True)),
    "1_1": (ConvSpec(3, 64, 3, stride=2), _V1_1_FIRES, PoolSpec(3, 2, ceil_mode=True)),
    "small": (ConvSpec(3, 64, 3, stride=1, padding=1), _V1_1_FIRES, PoolSpec(2, 2)),
}

FINAL_CONV_IN = 512  # channels of the last fire, the final 1x1 conv's input
# The final conv's place in ``classifier`` (after the dropout): its key is classifier.1.weight.
FINAL_CONV_KEY = "classifier.1.weight"


def fire_bypass(index: int, inplanes: int, outplanes: int, bypass: Bypass) -> str:
    """Paper, Section 6: simple bypass around fire3/5/7/9 (channels match), complex adds
    a 1x1 conv bypass around fire2/4/6/8. ``index`` counts fires from 0 (= fire2)."""
    if bypass == "none":
        return "none"
    if inplanes == outplanes and index % 2 == 1:
        return "identity"
    if bypass == "complex" and inplanes != outplanes:
        return "conv"
    return "none"


@dataclass(frozen=True)
class SqueezeNetSpec:
    version: Version
    bypass: Bypass = "none"


ARCHITECTURES: dict[str, SqueezeNetSpec] = {
    "squeezenet1_0": SqueezeNetSpec("1_0"),
    "squeezenet1_1": SqueezeNetSpec("1_1"),
    "squeezenet1_0_simple_bypass": SqueezeNetSpec("1_0", "simple"),
    "squeezenet1_0_complex_bypass": SqueezeNetSpec("1_0", "complex"),
    "squeezenet_small": SqueezeNetSpec("small"),
}


def list_models() -> list[str]:
    return sorted(ARCHITECTURES)


def check_model_name(name: str, *, option: str = "model") -> None:
    if name not in ARCHITECTURES:
        raise ValueError(f"{option}: unknown model {name!r}; choose one of {', '.join(list_models())}")


def feature_plan(version: str, bypass: Bypass = "none") -> list[ConvSpec | PoolSpec | FireSpec | str]:
    """The ``features`` block, one entry per module: the stem ConvSpec, "relu", then
    PoolSpecs and FireSpecs. A module's index here is its index in the built model."""
    if version not in _VERSIONS:
        raise ValueError(f"version: unknown SqueezeNet version {version!r}")
    stem, plan, pool = _VERSIONS[version]
    items: list[ConvSpec | PoolSpec | FireSpec | str] = [stem, "relu", pool]
    fire_index = 0
    for item in plan:
        if item == "M":
            items.append(pool)
            continue
        inplanes, squeeze, e1, e3 = item
        items.append(FireSpec(inplanes, squeeze, e1, e3, fire_bypass(fire_index, inplanes, e1 + e3, bypass)))  # type: ignore[arg-type]
        fire_index += 1
    return items


def prunable_weight_counts(name: str, *, num_classes: int) -> dict[str, int]:
    """Weights of each conv of model ``name`` with ``num_classes`` classes, keyed and
    ordered as ``sqz.compress.prune.prunable_parameters`` of the built model (every
    Conv2d/Linear weight): what pruning and the codec see, without building it."""
    check_model_name(name)
    spec = ARCHITECTURES[name]
    counts: dict[str, int] = {}
    for index, item in enumerate(feature_plan(spec.version, spec.bypass)):
        if isinstance(item, ConvSpec):
            counts[f"features.{index}.weight"] = item.weights
        elif isinstance(item, FireSpec):
            for conv_name, conv in item.convs().items():
                counts[f"features.{index}.{conv_name}.weight"] = conv.weights
    counts[FINAL_CONV_KEY] = ConvSpec(FINAL_CONV_IN, num_classes, 1).weights
    return counts


def _dense_and_total(name: str, num_classes: int, dense_below: int) -> tuple[int, int]:
    counts = prunable_weight_counts(name, num_classes=num_classes).values()
    return sum(c for c in counts if c <= dense_below), sum(counts)


def smallest_density(name: str, *, num_classes: int, dense_below: int) -> float:
    """The overall density a per-layer density prune of this model must exceed: the share
    of its prunable weights in layers of <= ``dense_below`` weights, which stay dense
    (``sqz.compress.prune.layer_thresholds`` refuses a density at or below it). 0.0 when
    no layer stays dense, or when every layer does (nothing is pruned then)."""
    dense, total = _dense_and_total(name, num_classes, dense_below)
    return 0.0 if dense >= total else dense / total


def _round_up(value: float, digits: int = 2) -> float:
    """``value`` rounded up to ``digits`` significant digits: a bound still safe to print."""
    if value <= 0:
        return 0.0
    scale = 10 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale) / scale


def check_densities(densities: Iterable[float], *, model: str, num_classes: int, dense_below: int,
                    option: str = "thresholds", dense_option: str = "dense_below") -> None:  # fmt: skip
    """Refuse, in one line naming ``option``, every density that keeps no more weights
    than the dense layers of ``model`` hold (the other layers would have to keep a
    negative share): what ``layer_thresholds`` refuses in each trial, said before any work."""
    dense, total = _dense_and_total(model, num_classes, dense_below)
    if not dense or dense >= total:
        return
    # The same arithmetic as layer_thresholds, so that the two agree at the boundary.
    too_low = [d for d in densities if d * total - dense <= 0]
    if too_low:
        bound = dense / total
        shown = ", ".join(f"{d:g}" for d in too_low)
        raise ValueError(f"{option}: density {shown} keeps fewer weights than {model}'s layers of <= {dense_below:,} weights "
                         f"(which stay dense) hold: {100 * bound:.1f}% of its {total:,} prunable weights with {num_classes} classes; use a "
                         f"density above {_round_up(bound):g} or lower {dense_option}")  # fmt: skip


def check_sweep_densities(sweep: Any, arch: dict[str, Any], *, option: str = "sweep.thresholds",
                          dense_option: str = "sweep.dense_below") -> None:  # fmt: skip
    """:func:`check_densities` for a grid sweep (a ``sqz.config.SweepConfig``) of the model
    ``arch`` ({"name", "kwargs": {"num_classes"}}). Only density-mode grid trials keep the
    small layers dense; per-layer trials prune each layer alone (no dense layers)."""
    num_classes = (arch.get("kwargs") or {}).get("num_classes")
    if sweep.prune_mode != "density" or sweep.per_layer or not sweep.dense_below or num_classes is None:
        return
    check_densities(sweep.thresholds, model=arch["name"], num_classes=num_classes, dense_below=sweep.dense_below,
                    option=option, dense_option=dense_option)  # fmt: skip
