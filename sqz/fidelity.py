"""Fidelity of a compressed model to its dense original, and the calibration that raises it.

For a model whose training data is not here (the released Deep Compression SqueezeNet),
accuracy cannot be measured, but agreement with the dense model can, on any images:

- ``calibration_sets``: images to calibrate on and held-out images to measure on, from a
  folder of images, a prepared Parquet dataset, or ``photos``: real photographs that
  ship inside pip packages (scikit-image, scikit-learn, matplotlib), cropped at several
  scales. The held-out split is by source photo (or file), never by crop: a crop of a
  calibration photo never scores the result.
- ``fidelity``: top-1 agreement, top-5 overlap and mean KL(dense || compressed), and the
  top-1 agreement on the crops the dense model is sure of (softmax top-1 >= 0.5) with
  their count, and the flips among near-ties (dense top-1 and top-2 within 0.02).
- ``fisher_importance``: a per-weight importance for weighted k-means, the diagonal
  Fisher information with labels drawn from the model's own predictions. At the dense
  model that is the diagonal of the Hessian of KL(dense || perturbed), so the weighted
  SSE sum F (w - q)^2 is (twice) the second-order estimate of the KL that quantization
  costs (as SqueezeLLM). No labels are needed.
- centroid fine-tuning by distillation (KL to the dense model's logits; only the
  codebooks move) is ``sqz.compress.kmeans.distill_codebooks_``.
- ``allocate_bits``: per-layer bit widths under a byte budget; each layer's bytes at
  each width are read from the real encoder's account (``codec.layer_sizes``) and its
  cost is the Fisher-predicted KL, so a multiple-choice knapsack picks the widths;
  ``scale_costs_by_measured_kl`` first rescales each layer's costs by one measured KL
  (the diagonal Fisher ranks a layer's widths well, but not layers against each other).

Plain torch: no Ray, no Prefect.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sqz.compress import codec
from sqz.compress.kmeans import SharedWeights, kl_divergence, quantize_
from sqz.compress.prune import prunable_parameters
from sqz.config import QuantConfig

__all__ = [
    "PHOTOS",
    "CalibrationSets",
    "calibration_sets",
    "subsample",
    "check_calibration_source",
    "logits_of",
    "fidelity",
    "fidelity_line",
    "check_confident",
    "CONFIDENT_PROB",
    "NEAR_TIE_GAP",
    "fisher_importance",
    "LayerBits",
    "layer_bit_options",
    "cluster_at_widths",
    "allocate_bits",
    "allocated_bytes",
    "quantize_with_bits_",
    "scale_costs_by_measured_kl",
    "budget_options",
    "KL_REFERENCE_BITS",
]

# A crop counts as confident where the dense model's softmax top-1 is at least this: there
# a flip is a real change of answer, not a coin toss between two near-equal classes.
CONFIDENT_PROB = 0.5
# Teacher top-1 and top-2 probabilities closer than this make a near-tie: such a crop flips
# under almost any change to the weights (issue 12: most of the held-out photos' flips).
NEAR_TIE_GAP = 0.02

# The width at which a layer's measured KL scales its budget costs: low enough that the
# KL stands clear of the calibration crops' noise, and always among the budget's widths.
KL_REFERENCE_BITS = 4

# Real photographs shipped inside pip packages: (package, file, group). A group is one
# source scene (the two motorcycle frames are a stereo pair), and the split is by group.
PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("skimage.data", "astronaut.png", "astronaut"),
    ("skimage.data", "camera.png", "camera"),
    ("skimage.data", "coins.png", "coins"),
    ("skimage.data", "moon.png", "moon"),
    ("skimage.data", "brick.png", "brick"),
    ("skimage.data", "grass.png", "grass"),
    ("skimage.data", "gravel.png", "gravel"),
    ("skimage.data", "hubble_deep_field.jpg", "hubble"),
    ("skimage.data", "retina.jpg", "retina"),
    ("skimage.data", "ihc.png", "ihc"),
    ("skimage.data", "cell.png", "cell"),
    ("skimage.data", "clock_motion.png", "clock"),
    ("skimage.data", "chelsea.png", "chelsea"),
    ("skimage.data", "coffee.png", "coffee"),
    ("skimage.data", "rocket.jpg", "rocket"),
    ("skimage.data", "motorcycle_left.png", "motorcycle"),
    ("skimage.data", "motorcycle_right.png", "motorcycle"),
    ("sklearn.datasets.images", "china.jpg", "china"),
    ("sklearn.datasets.images", "flower.jpg", "flower"),
    ("matplotlib.mpl-data.sample_data", "grace_hopper.jpg", "grace_hopper"),
)
# Held out by scene: natural photos of ImageNet-like objects (a cat, a cup, a rocket, a
# motorbike, a flower, a person), so the figures measure what a user's photos would see.
HELD_OUT_GROUPS = frozenset({"chelsea", "coffee", "rocket", "motorcycle", "flower", "grace_hopper"})
# Square crops, side = scale x the shorter side, on a g x g grid of positions.
CROP_GRID: tuple[tuple[float, int], ...] = ((1.0, 1), (0.75, 2), (0.5, 3), (0.35, 4))
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# A folder or dataset: one file in HELD_OUT_SHARE is held out, by a hash of its name.
HELD_OUT_SHARE = 5


@dataclass(frozen=True)
class CalibrationSets:
    """uint8 RGB crops ``(N, 3, S, S)``: ``calibration`` to fit on, ``held_out`` to score."""

    calibration: torch.Tensor
    held_out: torch.Tensor
    source: str

    def __post_init__(self) -> None:
        if len(self.calibration) == 0 or len(self.held_out) == 0:
            raise ValueError(f"--calibrate: {self.source} gave {len(self.calibration)} calibration and "
                             f"{len(self.held_out)} held-out images; both need at least one")  # fmt: skip


def _package_file(package: str, name: str) -> bytes:
    if package.startswith("matplotlib."):
        import matplotlib  # its data folder is not a Python package

        path = os.path.join(matplotlib.get_data_path(), "sample_data", name)
        with open(path, "rb") as f:
            return f.read()
    return (resources.files(package) / name).read_bytes()


def _crops(image: torch.Tensor, size: int, grid: Sequence[tuple[float, int]], flips: bool) -> list[torch.Tensor]:
    from torchvision.transforms.v2 import functional as TF

    _, height, width = image.shape
    short = min(height, width)
    out = []
    for scale, steps in grid:
        side = max(1, int(round(short * scale)))
        for row in np.linspace(0, height - side, steps).round().astype(int):
            for col in np.linspace(0, width - side, steps).round().astype(int):
                crop = TF.resize(image[:, row : row + side, col : col + side], [size, size], antialias=True)
                out.append(crop)
                if flips:
                    out.append(crop.flip(-1))
    return out


def _photo_sets(size: int) -> CalibrationSets:
    from sqz.data import decode_image_bytes

    calibration, held_out = [], []
    for package, name, group in PHOTOS:
        try:
            image = decode_image_bytes(_package_file(package, name))
        except (FileNotFoundError, ModuleNotFoundError) as exc:
            raise ValueError(f"--calibrate photos: {package}/{name} is missing ({exc}); install scikit-image, "
                             "scikit-learn and matplotlib") from None  # fmt: skip
        if group in HELD_OUT_GROUPS:
            held_out += _crops(image, size, CROP_GRID, flips=False)
        else:
            calibration += _crops(image, size, CROP_GRID, flips=True)  # flips: more views to fit on
    return CalibrationSets(torch.stack(calibration), torch.stack(held_out), "photos")


def _is_held_out(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELD_OUT_SHARE == 0


def _folder_sets(root: str, size: int, normalization: str) -> CalibrationSets:
    from sqz.data import CorruptImageError, ImageTransform

    transform = ImageTransform(train=False, image_size=size, normalization=normalization)  # type: ignore[arg-type]
    files = sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root) for name in names
        if name.lower().endswith(_IMAGE_SUFFIXES) and not name.startswith(".")
    )  # fmt: skip
    calibration, held_out = [], []
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        try:
            crop = transform(data)
        except CorruptImageError:
            continue
        (held_out if _is_held_out(rel) else calibration).append(crop)
    if not calibration and not held_out:
        raise ValueError(f"--calibrate: {root} has no readable images")
    return CalibrationSets(torch.stack(calibration) if calibration else torch.empty(0),
                           torch.stack(held_out) if held_out else torch.empty(0), root)  # fmt: skip


def _dataset_sets(url: str, size: int, normalization: str, limit: int) -> CalibrationSets:
    """A prepared dataset: its val split (or train), held out by a hash of the row number."""
    from sqz.data import ImageTransform, ParquetImages, SkippedImage, read_manifest

    splits = read_manifest(url)["splits"]
    split = "val" if "val" in splits else "train"
    transform = ImageTransform(train=False, image_size=size, normalization=normalization)  # type: ignore[arg-type]
    calibration, held_out = [], []
    for i, (image, _) in enumerate(ParquetImages(url, split, transform)):
        if isinstance(image, SkippedImage):
            continue
        (held_out if _is_held_out(f"{split}/{i}") else calibration).append(image)
        if len(calibration) + len(held_out) >= limit:
            break
    return CalibrationSets(torch.stack(calibration) if calibration else torch.empty(0),
                           torch.stack(held_out) if held_out else torch.empty(0), url)  # fmt: skip


def check_calibration_source(source: str) -> None:
    """One-line error for a source that is none of: photos, a folder, a prepared dataset."""
    from sqz import storage
    from sqz.data import is_prepared

    if source == "photos":
        return
    if not storage.is_local(source):
        if not is_prepared(source):
            raise ValueError(f"--calibrate: {source} is not a prepared dataset (no dataset.json)")
        return
    if not os.path.isdir(source):
        raise ValueError(f"--calibrate: unknown source {source!r}; give photos, a folder of images or a prepared dataset")


def calibration_sets(source: str, *, image_size: int = 227, normalization: str = "caffe",
                     max_images: int = 2000) -> CalibrationSets:  # fmt: skip
    """Calibration and held-out uint8 crops from ``source`` (see the module docstring)."""
    from sqz.data import is_prepared

    check_calibration_source(source)
    if source == "photos":
        return _photo_sets(image_size)
    if is_prepared(source):
        return _dataset_sets(source, image_size, normalization, max_images)
    return _folder_sets(source, image_size, normalization)


def subsample(images: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` of ``images`` chosen by ``seed`` (all when fewer), in a fixed order."""
    if count >= len(images):
        return images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    return images[order.sort().values]


# ---------------------------------------------------------------- fidelity


@torch.no_grad()
def logits_of(model: nn.Module, images: torch.Tensor, *, normalization: str = "caffe", batch_size: int = 64) -> torch.Tensor:
    """float32 logits of uint8 ``images`` (normalised per batch as the model expects)."""
    from sqz.data import normalize_batch

    model.eval()
    out = [model(normalize_batch(images[i : i + batch_size], normalization)).float() for i in range(0, len(images), batch_size)]  # type: ignore[arg-type]
    return torch.cat(out)


def check_confident(confident: float) -> None:
    """One-line error for a confidence threshold outside (0, 1)."""
    if not (isinstance(confident, (int, float)) and 0 < confident < 1):
        raise ValueError(f"--confident: the dense top-1 probability threshold must lie in (0, 1), got {confident}")


def fidelity(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, confident: float = CONFIDENT_PROB,
             near_tie: float = NEAR_TIE_GAP) -> dict[str, float | int | None]:  # fmt: skip
    """Top-1 agreement and top-5 overlap (%, vs the teacher's), mean KL(teacher || student);
    and, because a crop whose teacher is unsure flips under almost any change to the
    weights: the top-1 agreement on the crops where the teacher's softmax top-1 is at least
    ``confident`` (None when there are none), their count, and how many of the flipped
    crops are near-ties (teacher top-1 and top-2 probabilities less than ``near_tie`` apart)."""
    check_confident(confident)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"fidelity: logits of shape {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    k = min(5, teacher_logits.shape[1])
    agrees = student_logits.argmax(1) == teacher_logits.argmax(1)
    top_s, top_t = student_logits.topk(k, 1).indices, teacher_logits.topk(k, 1).indices
    overlap = (top_s.unsqueeze(2) == top_t.unsqueeze(1)).any(2).float().sum(1).mean() / k
    probs = teacher_logits.float().softmax(1).topk(min(2, teacher_logits.shape[1]), 1).values  # (N, 2)
    sure = probs[:, 0] >= confident
    tied = (probs[:, 0] - probs[:, -1]) < near_tie if probs.shape[1] > 1 else torch.zeros_like(sure)
    return {"images": int(len(teacher_logits)), "top1_agreement": 100.0 * float(agrees.float().mean()),
            "top5_overlap": 100.0 * float(overlap), "kl": float(kl_divergence(teacher_logits, student_logits).mean()),
            "confident_threshold": float(confident), "confident_images": int(sure.sum()),
            "confident_agreement": 100.0 * float(agrees[sure].float().mean()) if bool(sure.any()) else None,
            "flips": int((~agrees).sum()), "near_tie_images": int(tied.sum()),
            "near_tie_flips": int((~agrees & tied).sum())}  # fmt: skip


def fidelity_line(fid: Mapping[str, float | int | None]) -> str:
    """The figures of ``fidelity`` as one line of text (import-dc's output, the bench)."""
    confident = ("n/a" if fid["confident_agreement"] is None else f"{fid['confident_agreement']:.1f}%")
    return (f"top-1 agreement {fid['top1_agreement']:.1f}%, on confident crops (dense top-1 >= "
            f"{fid['confident_threshold']:g}: {fid['confident_images']} of {fid['images']}) {confident}, "
            f"flips {fid['flips']} ({fid['near_tie_flips']} of them among the {fid['near_tie_images']} near-ties), "
            f"top-5 overlap {fid['top5_overlap']:.1f}%, mean KL {fid['kl']:.4f}")


# ---------------------------------------------------------------- importance


def fisher_importance(model: nn.Module, batches: Iterable[torch.Tensor], *, labels: Iterable[torch.Tensor] | None = None,
                      micro_batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Diagonal Fisher of each conv/linear weight: the mean over micro-batches of the
    squared gradient of the summed cross-entropy.

    Without ``labels`` the targets are drawn from the model's own softmax (the true
    Fisher): each image's expected gradient is then zero, so the cross terms inside a
    micro-batch vanish in expectation and the estimate is the Hessian diagonal of
    KL(model || perturbed model). With ``labels`` (one tensor per batch) it is the
    empirical Fisher of the task loss. ``batches`` are model-ready float tensors."""
    if micro_batch < 1:
        raise ValueError(f"fisher micro_batch: must be at least 1, got {micro_batch}")
    params = prunable_parameters(model)
    sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the deployed function
    count = 0
    label_iter = iter(labels) if labels is not None else None
    for batch in batches:
        given = next(label_iter) if label_iter is not None else None
        for start in range(0, len(batch), micro_batch):
            x = batch[start : start + micro_batch]
            model.zero_grad(set_to_none=True)
            logits = model(x).float()
            if given is None:
                with torch.no_grad():
                    target = torch.multinomial(F.softmax(logits, 1).cpu(), 1, generator=generator).squeeze(1)
            else:
                target = given[start : start + micro_batch]
            F.cross_entropy(logits, target.to(logits.device), reduction="sum").backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += p.grad.detach().double() ** 2
            count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError("fisher_importance: no batches")
    return {name: (s / count).float() for name, s in sums.items()}


# ---------------------------------------------------------------- bits under a byte budget


@dataclass(frozen=True)
class LayerBits:
    """One layer at one bit width: its encoded bytes and its predicted cost (the
    importance-weighted squared error of its clustering; plain SSE without importance)."""

    layer: str
    bits: int
    bytes: int
    cost: float


def quantize_with_bits_(model: nn.Module, quant: QuantConfig, bits: Mapping[str, int],
                        importance: Mapping[str, torch.Tensor] | None = None) -> dict[str, SharedWeights]:  # fmt: skip
    """``quantize_`` with one bit width per parameter name (others at ``quant.bits``)."""
    overrides = tuple(f"{name.removesuffix('.weight')}={int(b)}" for name, b in bits.items())
    return quantize_(model, dataclasses.replace(quant, layer_bits=quant.layer_bits + overrides), importance=importance)


def cluster_at_widths(model: nn.Module, quant: QuantConfig, bit_widths: Sequence[int],
                      importance: Mapping[str, torch.Tensor] | None = None, *,
                      assign: Callable[[nn.Module, dict[str, SharedWeights]], object] | None = None) -> dict[int, nn.Module]:  # fmt: skip
    """A copy of ``model`` per width in ``bit_widths``, every layer clustered at that width
    (``quantize_``), then re-assigned in place by ``assign(copy, shared)`` where given (GPTQ
    from the dense model's layer inputs: each layer's result is then independent of the
    other layers' widths, so a per-layer choice can be costed from these copies)."""
    clustered = {}
    for b in sorted(set(int(x) for x in bit_widths)):
        trial = copy.deepcopy(model)
        shared = quantize_(trial, dataclasses.replace(quant, bits=b, layer_bits=()), importance=importance)
        if assign is not None:
            assign(trial, shared)
        clustered[b] = trial
    return clustered


def layer_bit_options(model: nn.Module, quant: QuantConfig, bit_widths: Sequence[int],
                      importance: Mapping[str, torch.Tensor] | None = None, *,
                      clustered: Mapping[int, nn.Module] | None = None) -> tuple[dict[str, list[LayerBits]], int]:  # fmt: skip
    """Every layer at every width in ``bit_widths``: bytes from the real encoder's per-layer
    account, cost from the clustering error (importance-weighted), both read from
    ``clustered`` (``cluster_at_widths``' copies; made here with nearest assignment when
    not given). Returns (layer -> options, the rest of the file in bytes: header and the
    unshared tensors)."""
    widths = sorted(set(int(x) for x in bit_widths))
    if clustered is None:
        clustered = cluster_at_widths(model, quant, widths, importance)
    original = {n: p.detach() for n, p in prunable_parameters(model).items()}
    options: dict[str, list[LayerBits]] = {name: [] for name in original}
    rest = []
    for b in widths:
        trial = clustered[b]
        data = codec.encode(trial)
        sizes = {row["layer"]: row["code_bytes"] + row["index_bytes"] + row["overhead_bytes"] for row in codec.layer_sizes(data)}
        for name, p in prunable_parameters(trial).items():
            error = (p.detach().double() - original[name].double()) ** 2
            weight = importance[name].double() if importance and name in importance else 1.0
            options[name].append(LayerBits(name, b, int(sizes[name]), float((error * weight).sum())))
        rest.append(len(data) - sum(sizes[name] for name in options))
    return options, max(rest)


def scale_costs_by_measured_kl(model: nn.Module, options: Mapping[str, Sequence[LayerBits]], reference: nn.Module,
                               images: torch.Tensor, *, reference_bits: int,
                               normalization: str = "caffe") -> tuple[dict[str, list[LayerBits]], dict[str, float]]:  # fmt: skip
    """``options`` (``layer_bit_options``' costs) with each layer's costs multiplied by one
    factor, chosen so that its cost at ``reference_bits`` equals the KL(model || copy)
    measured on ``images`` when that layer alone takes its weights from ``reference``
    (the copy clustered at that width) and the rest stay as in ``model``. Returns (the
    scaled options, each layer's measured KL).

    Why: with GPTQ assignment (its rounding errors compensated within the layer) the
    importance-weighted weight error of the released SqueezeNet's layers stays within
    ~20% of a fixed multiple of the measured KL across 4..7 bits, but that multiple spans
    10 (classifier) to 2,900 (conv1) between layers, so the knapsack spent bytes on conv1
    and starved the classifier (bench_fidelity.py). One forward pass per layer fixes the
    scale. A layer whose measured KL or predicted cost is 0 takes the others' median."""
    if not any(o.bits == reference_bits for opts in options.values() for o in opts):
        raise ValueError(f"scale_costs_by_measured_kl: no option at the reference width {reference_bits}")
    if len(images) == 0:
        raise ValueError("scale_costs_by_measured_kl: no images")
    reference_weights = prunable_parameters(reference)
    with torch.no_grad():
        teacher = logits_of(model, images, normalization=normalization)
        work = copy.deepcopy(model)
        params = prunable_parameters(work)
        measured: dict[str, float] = {}
        for name in options:
            kept = params[name].detach().clone()
            params[name].copy_(reference_weights[name])
            measured[name] = float(kl_divergence(teacher, logits_of(work, images, normalization=normalization)).mean())
            params[name].copy_(kept)
    factors = {}
    for name, opts in options.items():
        predicted = next((o.cost for o in opts if o.bits == reference_bits), 0.0)
        if predicted > 0 and measured[name] > 0:
            factors[name] = measured[name] / predicted
    fallback = float(np.median(list(factors.values()))) if factors else 1.0
    scaled = {name: [dataclasses.replace(o, cost=o.cost * factors.get(name, fallback)) for o in opts]
              for name, opts in options.items()}  # fmt: skip
    return scaled, measured


def budget_options(model: nn.Module, quant: QuantConfig, bit_widths: Sequence[int],
                   importance: Mapping[str, torch.Tensor] | None = None, *,
                   assign: Callable[[nn.Module, dict[str, SharedWeights]], object] | None = None,
                   kl_images: torch.Tensor | None = None, normalization: str = "caffe") -> tuple[dict[str, list[LayerBits]], int]:  # fmt: skip
    """``allocate_bits``' options for ``model``: every width's copy (``cluster_at_widths``,
    re-assigned by ``assign`` where given) costed by ``layer_bit_options``, and with
    ``kl_images`` each layer's costs scaled by its KL at ``KL_REFERENCE_BITS`` measured
    on them (``scale_costs_by_measured_kl``). Returns (layer -> options, rest bytes)."""
    copies = cluster_at_widths(model, quant, bit_widths, importance, assign=assign)
    options, rest = layer_bit_options(model, quant, bit_widths, importance, clustered=copies)
    if kl_images is not None:
        options, _ = scale_costs_by_measured_kl(model, options, copies[KL_REFERENCE_BITS], kl_images,
                                                reference_bits=KL_REFERENCE_BITS, normalization=normalization)  # fmt: skip
    return options, rest


def allocated_bytes(options: Mapping[str, Sequence[LayerBits]], rest: int, bits: Mapping[str, int]) -> int:
    """The file bytes ``options`` predict for one width per layer (``allocate_bits``' choice)."""
    return rest + sum(next(o.bytes for o in options[layer] if o.bits == b) for layer, b in bits.items())


def smallest_file(options: Mapping[str, Sequence[LayerBits]], rest: int) -> int:
    return rest + sum(min(o.bytes for o in opts) for opts in options.values())


def allocate_bits(options: Mapping[str, Sequence[LayerBits]], rest: int, budget: int, *, granularity: int = 8) -> dict[str, int]:
    """Per-layer bit widths with the least summed cost whose file fits ``budget`` bytes:
    a multiple-choice knapsack solved exactly by dynamic programming over bytes (in
    ``granularity``-byte steps, each layer's bytes rounded up, so the choice never
    exceeds the budget by rounding)."""
    smallest = smallest_file(options, rest)
    if budget < smallest:
        raise ValueError(f"--size-budget: {budget:,} bytes is below the smallest file these bit widths reach ({smallest:,} bytes)")
    capacity = (budget - rest) // granularity
    infinity = np.inf
    best = np.full(capacity + 1, infinity)
    best[0] = 0.0
    layers = list(options)
    picks = []
    for layer in layers:
        nxt = np.full(capacity + 1, infinity)
        arg = np.full(capacity + 1, -1, dtype=np.int64)
        for index, option in enumerate(options[layer]):
            units = -(-option.bytes // granularity)
            if units > capacity:
                continue
            shifted = np.full(capacity + 1, infinity)
            shifted[units:] = best[: capacity + 1 - units] + option.cost
            better = shifted < nxt
            nxt[better], arg[better] = shifted[better], index
        best = nxt
        picks.append(arg)
    if not np.isfinite(best.min()):
        raise ValueError(f"--size-budget: {budget:,} bytes leaves no room once each layer is rounded to "
                         f"{granularity}-byte steps; the smallest file is {smallest:,} bytes")  # fmt: skip
    used = int(np.argmin(best))  # the least cost over every fill (the smaller fill on ties)
    chosen: dict[str, int] = {}
    for layer, arg in zip(reversed(layers), reversed(picks)):
        option = options[layer][int(arg[used])]
        chosen[layer] = option.bits
        used -= -(-option.bytes // granularity)
    return chosen
