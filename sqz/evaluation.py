"""``sqz eval``: top-1/top-5 of a model file over any dataset sqz reads, recorded as one
row of the ``evaluations`` Parquet table.

A model file is either a decoded ``.sqz`` (architecture in its header) or dense
safetensors weights (architecture from ``arch``, or from the run manifest beside a
run's ``models/`` folder; the class count from the classifier's shape). Neither format
can run code when read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from sqz import metrics, storage
from sqz.config import DataConfig

__all__ = ["LoadedModel", "load_model_file", "default_run_url", "plan_evaluation", "evaluate_baseline", "evaluate_file"]

DEFAULT_EVAL_RUN = "./sqz-runs/evaluations"


@dataclass
class LoadedModel:
    model: nn.Module
    arch: str
    num_classes: int
    digest: str  # sha256 of the file's bytes
    input: dict[str, Any]  # what the file says about its input (image_size, normalization)


def _run_of(model_url: str) -> str | None:
    """``<run>/models/<file>`` -> ``<run>`` when that run has a manifest."""
    parts = storage.absolute(model_url).rstrip("/").rsplit("/", 2)
    if len(parts) == 3 and parts[1] == "models" and storage.exists(storage.join(parts[0], "manifest.json")):
        return parts[0]
    return None


def load_model_file(url: str, *, arch: str | None = None) -> LoadedModel:
    from sqz.compress import codec
    from sqz.models import build_model, list_models

    data = storage.read_bytes(url)
    digest = hashlib.sha256(data).hexdigest()
    if data[:4] == codec.MAGIC:
        header, _ = codec.read_header(data)
        model = codec.decode(data)
        return LoadedModel(model, header["arch"]["name"], model.num_classes, digest,
                           dict(header.get("meta", {}).get("input") or {}))  # fmt: skip
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValueError(f"MODEL: {url} is neither a .sqz file nor safetensors ({exc})") from None
    if arch is None:
        run = _run_of(url)
        if run is None:
            raise ValueError(f"--arch: {url} does not name its architecture; give one of {', '.join(list_models())}")
        from sqz.runs.manifest import read_manifest

        arch = (read_manifest(run)["arch"] or {}).get("name")
        if arch is None:
            raise ValueError(f"--arch: the manifest of {run} names no architecture; give one of {', '.join(list_models())}")
    if arch not in list_models():  # named by --arch or a manifest
        raise ValueError(f"--arch: unknown model {arch!r}; choose one of {', '.join(list_models())}")
    if "classifier.1.weight" not in state:
        raise ValueError(f"MODEL: {url} has no classifier.1.weight, so it is not a SqueezeNet state dict")
    num_classes = int(state["classifier.1.weight"].shape[0])
    model = build_model(arch, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"MODEL: {url} does not fit {arch}: {first[1].strip() if len(first) > 1 else first[0]}") from None
    return LoadedModel(model.eval(), arch, num_classes, digest, {})


def default_run_url(model_url: str) -> str:
    """Rows about a run's own model go to that run; others to ./sqz-runs/evaluations."""
    return _run_of(model_url) or DEFAULT_EVAL_RUN


def _resolve(model_url: str, data_url: str, split: str, arch: str | None, image_size: int | None,
             normalization: str | None, batch_size: int) -> tuple[LoadedModel, int, str, DataConfig]:  # fmt: skip
    from sqz.data import check_data_url, num_classes_of
    from sqz.models import MODEL_FACTS

    check_data_url(data_url, splits=(split,))
    loaded = load_model_file(model_url, arch=arch)
    image_size = image_size or loaded.input.get("image_size") or MODEL_FACTS[loaded.arch].input_size
    normalization = normalization or loaded.input.get("normalization") or "torchvision"
    data_cfg = DataConfig(url=data_url, image_size=int(image_size), normalization=normalization, batch_size=batch_size)
    classes = num_classes_of(data_cfg)
    if classes != loaded.num_classes:
        raise ValueError(f"--data: {data_url} has {classes} classes but the model predicts {loaded.num_classes}; "
                         "labels would not line up")  # fmt: skip
    return loaded, int(image_size), normalization, data_cfg


def plan_evaluation(model_url: str, data_url: str, *, split: str = "val", arch: str | None = None,
                    image_size: int | None = None, normalization: str | None = None,
                    batch_size: int = 64) -> dict[str, Any]:  # fmt: skip
    """What :func:`evaluate_file` will do, checked before it starts (a wrong file, data,
    architecture or class count is a one-line ValueError): the model's architecture,
    the input size and normalisation it will be fed."""
    loaded, image_size, normalization, _ = _resolve(model_url, data_url, split, arch, image_size, normalization, batch_size)
    return {"arch": loaded.arch, "image_size": image_size, "normalization": normalization}


def evaluate_baseline(run_url: str, arch: dict[str, Any], data: DataConfig) -> dict[str, Any]:
    """The run's baseline validation accuracy, once per run (its ``evaluations`` row)."""
    from safetensors.torch import load as load_safetensors
    from torch.utils.data import DataLoader

    from sqz import engine
    from sqz.data import load_split
    from sqz.models import build_model

    rows = [r for r in metrics.read_table(run_url, "evaluations").to_pylist() if r["model"] == "baseline" and r["split"] == "val"]
    if rows:
        return rows[-1]
    model = build_model(arch["name"], **arch["kwargs"])
    model.load_state_dict(load_safetensors(storage.read_bytes(storage.join(run_url, "models", "baseline.safetensors"))))
    result = engine.evaluate(model, DataLoader(load_split(data, "val"), batch_size=256))
    row = {"run_id": run_url.rstrip("/").rsplit("/", 1)[-1], "model": "baseline", "dataset": data.url, "split": "val",
           "top1": result.top1, "top5": result.top5, "images": result.images}  # fmt: skip
    metrics.write_rows(run_url, "evaluations", [row], writer_id="baseline-val")
    return row


def evaluate_file(
    model_url: str,
    data_url: str,
    *,
    split: str = "val",
    arch: str | None = None,
    image_size: int | None = None,
    normalization: str | None = None,
    batch_size: int = 64,
    workers: int = 0,
    run_url: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_url`` on ``data_url``'s ``split`` and write the evaluations row;
    returns the row plus ``skipped`` (unreadable images) and ``row_url``. Input size and
    normalisation default to what the file records (the released model: 227, caffe),
    then to the architecture's input size and torchvision's normalisation."""
    from sqz import engine
    from sqz.data import load_split, make_loader

    loaded, image_size, normalization, data_cfg = _resolve(model_url, data_url, split, arch, image_size, normalization, batch_size)
    loader = make_loader(load_split(data_cfg, split), batch_size=batch_size, num_workers=workers)  # type: ignore[arg-type]
    result = engine.evaluate(loaded.model, loader)
    run_url = run_url or default_run_url(model_url)
    row = {
        "run_id": run_url.rstrip("/").rsplit("/", 1)[-1], "model": storage.absolute(model_url),
        "dataset": storage.absolute(data_url) if data_url not in ("digits", "synthetic") else data_url,
        "split": split, "top1": result.top1, "top5": result.top5, "images": result.images,
    }  # fmt: skip
    # One file per (model bytes, data, split, input): re-evaluating replaces, never duplicates.
    key = f"{loaded.digest}|{row['dataset']}|{split}|{image_size}|{normalization}"
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", model_url.rstrip("/").rsplit("/", 1)[-1])[:80]
    writer_id = f"{stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    row_url = metrics.write_rows(run_url, "evaluations", [row], writer_id=writer_id)
    skipped = len(getattr(loader, "skipped", []))
    return {**row, "skipped": skipped, "row_url": row_url, "image_size": image_size, "normalization": normalization}
