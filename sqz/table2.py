"""The SqueezeNet paper's Table 2 as it stands for real: sizes computed from the
architectures as built (torchvision's reference CNNs, sqz's SqueezeNets) and from the
bytes of compressed .sqz files, beside the accuracies as published (cited per row).

Sizes: float32 = 4 bytes per parameter; MB = 10^6 bytes. The reduction is against 32-bit
AlexNet as torchvision builds it (61,100,840 parameters), the paper's reference ("240MB").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

__all__ = ["SizeRow", "alexnet_float32_bytes", "architecture_rows", "compressed_row", "render"]


@dataclass(frozen=True)
class SizeRow:
    model: str
    parameters: int  # dense parameter count of the architecture (1000 classes)
    size_bytes: int  # float32 size, or the real file size of a compressed model
    ratio_vs_alexnet: float
    accuracy: tuple[float, float] | None  # top-1, top-5 as published
    accuracy_source: str
    note: str = ""
    nonzero: int | None = None  # compressed rows: weights left after pruning


def alexnet_float32_bytes() -> int:
    from sqz.models import build_reference, count_parameters

    return 4 * count_parameters(build_reference("alexnet"))


def _torchvision_accuracy(builder: str) -> tuple[tuple[float, float] | None, str]:
    """The accuracy torchvision publishes for its ImageNet weights of ``builder`` (metadata
    shipped inside torchvision; nothing is downloaded)."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(builder).IMAGENET1K_V1
    metrics = weights.meta["_metrics"]["ImageNet-1K"]
    return (metrics["acc@1"], metrics["acc@5"]), f"torchvision {type(weights).__name__}.IMAGENET1K_V1"


def architecture_rows() -> list[SizeRow]:
    """Reference CNNs (torchvision) and every registered SqueezeNet, dense float32."""
    from sqz.models import MODEL_FACTS, REFERENCE_CNNS, build_model, build_reference, count_parameters, list_models

    alexnet = alexnet_float32_bytes()
    rows = []
    for name, spec in REFERENCE_CNNS.items():
        params = count_parameters(build_reference(name))
        accuracy, source = _torchvision_accuracy(spec.builder)
        note = spec.note
        if "aux_logits" in spec.options:
            note += f" ({count_parameters(build_reference(name, with_aux=True)):,} parameters with)"
        rows.append(SizeRow(spec.label, params, 4 * params, alexnet / (4 * params), accuracy, source, note))
    for name in list_models():
        facts = MODEL_FACTS[name]
        params = count_parameters(build_model(name, num_classes=1000))
        note = f"the paper prints {facts.published_mb} MB" if facts.published_mb is not None else ""
        if name == "squeezenet_small":
            note = "v1.1 fires with a 3x3 stride-1 stem for 32x32 inputs (sqz's digits demo); no ImageNet result"
        rows.append(SizeRow(name, params, 4 * params, alexnet / (4 * params), facts.published_accuracy,
                            facts.accuracy_source, note))  # fmt: skip
    return rows


def compressed_row(url: str) -> SizeRow:
    """A .sqz file's real size (bytes on storage) and its ratio vs 32-bit AlexNet."""
    from sqz import storage
    from sqz.compress.codec import layer_sizes, read_header
    from sqz.models import MODEL_FACTS, build_model, count_parameters

    data = storage.read_bytes(url)
    header, _ = read_header(data)  # a CorruptFileError (ValueError) names a bad file
    arch = header["arch"]
    params = count_parameters(build_model(arch["name"], **dict(arch.get("kwargs") or {})))
    layers = layer_sizes(data)
    nonzero = sum(r["nonzero"] for r in layers if r["bits"] < 32)  # shared (pruned) tensors
    shared = sum(r["weights"] for r in layers if r["bits"] < 32)
    size = storage.size_of(url)
    source = str(header.get("meta", {}).get("source", ""))
    accuracy, accuracy_source = None, ""
    released = source.startswith("Deep Compression release") and arch["name"] == "squeezenet1_0"
    if released and "reclustered" not in header.get("meta", {}):
        # The released weights, losslessly: the paper's "SqueezeNet + Deep Compression" row.
        # Re-clustered ones are other weights, whose accuracy nobody published.
        accuracy, accuracy_source = MODEL_FACTS["squeezenet1_0"].published_accuracy, "SqueezeNet paper, Table 2"
    note = (f"{arch['name']}, {nonzero:,} of {shared:,} weights kept ({100 * nonzero / max(shared, 1):.1f}%), "
            f"{4 * params / size:.1f}x smaller than its float32")  # fmt: skip
    return SizeRow(os.path.basename(url.rstrip("/")), params, size, alexnet_float32_bytes() / size,
                   accuracy, accuracy_source, note, nonzero)  # fmt: skip


def render(rows: Sequence[SizeRow]) -> str:
    alexnet = alexnet_float32_bytes()
    lines = [
        f"Table 2 as built: float32 = 4 bytes/parameter, MB = 10^6 bytes; reduction vs 32-bit AlexNet "
        f"({alexnet // 4:,} parameters, {alexnet / 1e6:.2f} MB)",
        f"{'model':30} {'parameters':>12} {'MB':>9} {'vs AlexNet':>10}  {'top-1/top-5':>13}  accuracy as published by",
    ]
    for row in rows:
        accuracy = f"{row.accuracy[0]:.1f} / {row.accuracy[1]:.1f}" if row.accuracy else "-"
        lines.append(f"{row.model:30} {row.parameters:>12,} {row.size_bytes / 1e6:>9.3f} "
                     f"{row.ratio_vs_alexnet:>9.1f}x  {accuracy:>13}  {row.accuracy_source or '-'}")  # fmt: skip
    notes = [f"  {row.model}: {row.note}" for row in rows if row.note]
    if notes:
        lines += ["notes:", *notes]
    lines.append("  Inception-v4 is not in torchvision: not listed. The paper (Table 2) prints AlexNet 240 MB "
                 "57.2/80.3, SqueezeNet 4.8 MB (50x), + Deep Compression 0.66 MB (363x, 8-bit) and 0.47 MB (510x, 6-bit).")
    return "\n".join(lines)
