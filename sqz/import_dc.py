"""``sqz import-dc``: the released Deep Compression SqueezeNet as .sqz, optionally
re-clustered, calibrated on images and fitted to a byte budget.

Without calibration, re-clustering minimises each layer's weight error (plain k-means).
With ``calibrate`` (photos, a folder, a prepared dataset: see ``sqz.fidelity``) the
dense released model is the teacher: the clustering is weighted by the diagonal Fisher
of the model on the calibration images, the weights are assigned to the codebook by GPTQ
(``assign="gptq"``: rounding errors compensated within each layer, on its inputs from the
calibration images; ``sqz.compress.gptq``) or to the nearest centroid, the centroids are
optionally fine-tuned by distillation, and the result's fidelity to the dense model is
measured on the held-out images.
``size_budget`` picks each layer's bit width (from ``BUDGET_BITS``) so that the real
encoded file fits: with calibration, by the measured greedy of ``sqz.allocate`` (the file
is assembled from the per-width copies it measured, and is never worse on calibration
crops than the best uniform width at no more bytes); without, by the knapsack over
predicted costs (``sqz.fidelity.allocate_bits``). The per-width copies and the Fisher
importance are cached in ``sqz.data.builtin.cache_dir()`` (safetensors, keyed by the released
file, the calibration crops, the options and the clustering code), so a second budget
or a rerun skips them. Plain torch: no Ray, no Prefect.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from sqz.allocate import KLProbe, MeasuredChoice, allocate_measured, compose
from sqz.compress import codec, gptq, kmeans
from sqz.compress.dcnet import load_dcnet
from sqz.compress.gptq import gptq_
from sqz.compress.kmeans import distill_codebooks_, quantize_
# ImportOptions lives in sqz.config (torch-free: the CLI builds its parser from the defaults).
from sqz.config import ImportOptions
from sqz.data import normalize_batch
from sqz.fidelity import (KL_REFERENCE_BITS, LayerBits, allocate_bits, allocated_bytes, budget_options, calibration_sets,
                          cluster_at_widths, fidelity, fisher_importance, layer_bit_options, logits_of, quantize_with_bits_,
                          smallest_file, subsample)  # fmt: skip

__all__ = ["ImportOptions", "import_released", "import_to", "check_size_budget", "BUDGET_BITS", "RELEASED_INPUT"]

RELEASED_INPUT = {"image_size": 227, "normalization": "caffe"}  # Caffe's convention, recorded in the file
BUDGET_BITS = (3, 4, 5, 6, 7, 8)  # the widths a byte budget chooses among, per layer
_FISHER_BATCH = 32


def _prepare(images: torch.Tensor) -> torch.Tensor:
    return normalize_batch(images, RELEASED_INPUT["normalization"])  # type: ignore[arg-type]


@dataclass
class _Calibration:
    """What the calibration images give: the held-out set and the dense model's logits on
    it (for the fidelity figures), the calibration subset, its logits (distillation's
    targets) and the per-weight Fisher importance (weighted clustering), where used."""

    held_out: torch.Tensor
    held_logits: torch.Tensor
    images: torch.Tensor
    logits: torch.Tensor | None
    importance: dict[str, torch.Tensor] | None


def _cache_key(*parts: Any) -> str:
    """A digest of what a cached result depends on, the clustering code included (a change
    to k-means or GPTQ must not read results it would no longer produce)."""
    digest = hashlib.sha256()
    for module in (kmeans, gptq):
        with open(module.__file__, "rb") as f:  # type: ignore[arg-type]
            digest.update(f.read())
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
    return digest.hexdigest()[:24]


def _cached_tensors(name: str, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                    log: Callable[[str], None]) -> dict[str, torch.Tensor]:  # fmt: skip
    """``compute()``'s tensors, read from ``cache_dir()/import-dc/<name>-<key>.safetensors``
    when an earlier run wrote them (no pickle). An unreadable file is recomputed; an
    unwritable cache folder only means no cache."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from sqz.data.builtin import cache_dir

    path = os.path.join(cache_dir(), "import-dc", f"{name}-{key}.safetensors")
    if os.path.exists(path):
        try:
            tensors = load_file(path)
            log(f"{name}: from the cache ({path})")
            return tensors
        except (SafetensorError, OSError):
            pass
    tensors = compute()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)  # a crash never leaves half a cache file under the final name
    except OSError:
        pass
    return tensors


def _calibrate(dense: torch.nn.Module, source: str, options: ImportOptions, log: Callable[[str], None],
               seconds: dict[str, float], released_digest: str = "") -> _Calibration:  # fmt: skip
    start = time.perf_counter()
    sets = calibration_sets(source, image_size=RELEASED_INPUT["image_size"], normalization=RELEASED_INPUT["normalization"])
    images = subsample(sets.calibration, options.calibration_images, options.seed)
    log(f"calibration: {source}: {len(images)} calibration images "
        f"(of {len(sets.calibration)}), {len(sets.held_out)} held out")  # fmt: skip
    held_logits = logits_of(dense, sets.held_out)
    logits = logits_of(dense, images) if options.uses_distillation else None
    seconds["teacher"] = time.perf_counter() - start
    importance = None
    if options.uses_fisher:
        start = time.perf_counter()
        fisher_set = subsample(images, options.fisher_images, options.seed + 1)
        batches = (_prepare(fisher_set[i : i + _FISHER_BATCH]) for i in range(0, len(fisher_set), _FISHER_BATCH))
        key = _cache_key(released_digest, fisher_set.numpy().tobytes(), options.seed, _FISHER_BATCH)
        importance = _cached_tensors("fisher", key, lambda: fisher_importance(copy.deepcopy(dense), batches, seed=options.seed), log)
        seconds["fisher"] = time.perf_counter() - start
    return _Calibration(sets.held_out, held_logits, images, logits, importance)


def _fit_to_calibration_(model: torch.nn.Module, shared: Any, released: dict[str, torch.Tensor], calibration: _Calibration,
                         options: ImportOptions, log: Callable[[str], None], out: dict[str, Any]) -> None:  # fmt: skip
    """GPTQ assignment and codebook distillation of the clustered ``model``, as ``options`` ask."""
    if options.uses_gptq:
        start = time.perf_counter()
        gptq_set = subsample(calibration.images, options.gptq_images, options.seed + 2)
        report = gptq_(model, shared, released, gptq_set, prepare=_prepare, inputs_from=options.gptq_inputs,
                       damp=options.gptq_damp, refit=options.gptq_refit, rounds=options.gptq_rounds)  # fmt: skip
        nearest, assigned = sum(r["nearest"] for r in report.values()), sum(r["gptq"] for r in report.values())
        log(f"gptq ({options.gptq_inputs} inputs, {len(gptq_set)} images): summed layer output error "
            f"{assigned / nearest:.3f} x nearest rounding's")  # fmt: skip
        out["seconds"]["gptq"] = time.perf_counter() - start
    if options.uses_distillation:
        start = time.perf_counter()
        losses = distill_codebooks_(model, shared, calibration.images, calibration.logits, steps=options.distill_steps,
                                    lr=options.distill_lr, batch_size=options.distill_batch, prepare=_prepare,
                                    seed=options.seed)  # fmt: skip
        out["seconds"]["distill"] = time.perf_counter() - start
        out["distill_loss"] = (losses[0], sum(losses[-10:]) / len(losses[-10:]))


def _budget_options(dense: torch.nn.Module, released: dict[str, torch.Tensor], calibration: _Calibration | None,
                    options: ImportOptions, importance: dict[str, torch.Tensor] | None,
                    log: Callable[[str], None]) -> tuple[dict[str, list[LayerBits]], int]:  # fmt: skip
    """Each layer's bytes and cost at each of ``BUDGET_BITS`` for the allocator: its
    importance-weighted error after nearest assignment; with ``budget_kl_images``, after
    the assignment the file will get (GPTQ from dense inputs: each layer's result is then
    independent of the others' widths), scaled by the layer's measured KL at
    ``KL_REFERENCE_BITS`` (``sqz.fidelity.budget_options``)."""
    assign, probe = None, None
    if calibration is not None and options.budget_kl_images > 0:
        probe = subsample(calibration.images, options.budget_kl_images, options.seed + 3)
        if options.uses_gptq and options.gptq_inputs == "dense":
            gptq_set = subsample(calibration.images, options.gptq_images, options.seed + 2)

            def assign(model: torch.nn.Module, shared: Any) -> None:
                gptq_(model, shared, released, gptq_set, prepare=_prepare, inputs_from="dense", damp=options.gptq_damp,
                      refit=options.gptq_refit, rounds=options.gptq_rounds)  # fmt: skip

    start = time.perf_counter()
    bit_options, rest = budget_options(dense, options.quant, BUDGET_BITS, importance, assign=assign, kl_images=probe,
                                       normalization=RELEASED_INPUT["normalization"])  # fmt: skip
    if probe is not None:
        log(f"size budget: each layer's costs scaled by its KL at {KL_REFERENCE_BITS} bits on {len(probe)} "
            f"calibration images ({time.perf_counter() - start:.0f} s with the widths' clustering)")  # fmt: skip
    return bit_options, rest


def _width_copies(dense: torch.nn.Module, released: dict[str, torch.Tensor], calibration: _Calibration,
                  options: ImportOptions, released_digest: str, log: Callable[[str], None]) -> dict[int, torch.nn.Module]:  # fmt: skip
    """The model with every layer at each of ``BUDGET_BITS``, clustered and re-assigned as
    the file will be (GPTQ from dense inputs, or nearest), from the cache where it has them."""
    assign = None
    gptq_set = subsample(calibration.images, options.gptq_images, options.seed + 2)
    if options.uses_gptq:

        def assign(model: torch.nn.Module, shared: Any) -> None:
            gptq_(model, shared, released, gptq_set, prepare=_prepare, inputs_from="dense", damp=options.gptq_damp,
                  refit=options.gptq_refit, rounds=options.gptq_rounds)  # fmt: skip

    def compute() -> dict[str, torch.Tensor]:
        copies = cluster_at_widths(dense, options.quant, BUDGET_BITS, calibration.importance, assign=assign)
        return {f"{b}/{n}": p.detach() for b, m in copies.items() for n, p in m.named_parameters() if p.dim() > 1}

    importance = (b"" if calibration.importance is None else
                  b"".join(calibration.importance[n].numpy().tobytes() for n in sorted(calibration.importance)))  # fmt: skip
    key = _cache_key(released_digest, gptq_set.numpy().tobytes() if options.uses_gptq else b"", importance, BUDGET_BITS,
                     options.method, options.assign, options.gptq_damp, options.gptq_refit, options.gptq_rounds)  # fmt: skip
    tensors = _cached_tensors("widths", key, compute, log)
    copies = {}
    for b in BUDGET_BITS:
        model = copy.deepcopy(dense)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() > 1:
                    p.copy_(tensors[f"{b}/{name}"])
        copies[b] = model
    return copies


def _measured_budget(dense: torch.nn.Module, released: dict[str, torch.Tensor], calibration: _Calibration,
                     options: ImportOptions, released_digest: str, meta: dict[str, Any], log: Callable[[str], None],
                     out: dict[str, Any]) -> tuple[torch.nn.Module, bytes]:  # fmt: skip
    """The file under ``options.size_budget`` by the measured greedy (``sqz.allocate``):
    assembled from the per-width copies, so the file is exactly the model it measured."""
    start = time.perf_counter()
    copies = _width_copies(dense, released, calibration, options, released_digest, log)
    bit_options, rest = layer_bit_options(dense, options.quant, BUDGET_BITS, clustered=copies)
    out["seconds"]["widths"] = time.perf_counter() - start
    # Probe and check are disjoint calibration crops: the check is not the set the greedy fitted.
    order = torch.randperm(len(calibration.images), generator=torch.Generator().manual_seed(options.seed + 3))
    probe_at = order[: options.allocator_images].sort().values
    check_at = order[options.allocator_images : options.allocator_images + options.check_images].sort().values
    if len(check_at) == 0:
        log("allocator: no calibration crops left for the check; it reuses the probe crops")
        check_at = probe_at
    start = time.perf_counter()
    probe = KLProbe(dense, calibration.images[probe_at], prepare=_prepare)
    check = KLProbe(dense, calibration.images[check_at], prepare=_prepare)
    target = int(options.size_budget)  # type: ignore[arg-type]
    for _ in range(4):  # the encoder's header differs from the estimate by a few bytes: over budget, aim lower
        choice: MeasuredChoice = allocate_measured(dense, copies, bit_options, rest, target, probe, check, log=log)
        model = compose(dense, copies, choice.bits)
        data = codec.encode(model, meta=meta)
        if len(data) <= options.size_budget:  # type: ignore[operator]
            break
        log(f"size budget: {len(data):,} bytes as coded, {len(data) - options.size_budget:,} over; retrying tighter")  # type: ignore[operator]
        target = min(target, options.size_budget - (len(data) - choice.bytes)) - 64  # type: ignore[operator]
    else:
        raise ValueError(f"--size-budget: could not fit {options.size_budget:,} bytes (last try {len(data):,})")
    out["seconds"]["allocator"] = time.perf_counter() - start
    log(f"allocator check on {len(check_at)} calibration crops: {choice.summary()}")
    out["layer_bits"] = choice.bits
    out["allocator"] = {"chooser": "measured", "rounds": choice.rounds, "probe_images": len(probe_at),
                        "check_images": len(check_at), "greedy": choice.greedy, "uniform": choice.uniform,
                        "fallback_bits": choice.fallback, "check_kl": choice.kl, "check_agreement": choice.agreement,
                        "summary": choice.summary()}  # fmt: skip
    return model, data


def import_released(source: bytes, options: ImportOptions, *, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """The released model per ``options``. Returns ``data`` (the .sqz bytes), ``model``
    (decoded from them), ``bit_exact`` (the decoded tensors equal the encoded ones), ``fidelity`` (held-out figures vs the dense model, with
    calibration), ``layer_bits`` (with a budget) and timings."""
    dense = load_dcnet(source)
    meta: dict[str, Any] = {"source": "Deep Compression release, compressed_SqueezeNet.net", "input": dict(RELEASED_INPUT)}
    out: dict[str, Any] = {"fidelity": None, "layer_bits": None, "allocator": None, "seconds": {}}
    if options.bits is None and options.size_budget is None:
        return _finish(out, dense, codec.encode(dense, meta=meta))

    quant = options.quant
    _refuse_impossible_budget(dense, options)  # before any calibration work
    released_digest = hashlib.sha256(source).hexdigest()
    calibration = (None if options.calibrate is None
                   else _calibrate(dense, options.calibrate, options, log, out["seconds"], released_digest))  # fmt: skip
    importance = calibration.importance if calibration is not None else None

    released = {name: p.detach().clone() for name, p in dense.named_parameters() if p.dim() > 1}
    meta["reclustered"] = {"bits": options.bits, "method": quant.method, "size_budget": options.size_budget,
                           "calibrate": options.calibrate, "weighting": options.weighting if options.calibrate else "none",
                           "distill_steps": options.distill_steps if options.calibrate else 0,
                           "assign": options.assign if options.calibrate else "nearest"}  # fmt: skip
    if options.uses_measured_allocator:
        meta["reclustered"]["allocator"] = "measured"
        assert calibration is not None
        model, data = _measured_budget(dense, released, calibration, options, released_digest, meta, log, out)
        return _score(out, model, data, released, calibration, options)
    if options.size_budget is not None:
        start = time.perf_counter()
        bit_options, rest = _budget_options(dense, released, calibration, options, importance, log)
        out["seconds"]["bit_options"] = time.perf_counter() - start
    target = options.size_budget
    for _ in range(4):  # a budget overshot once assigned (GPTQ's labels code to other sizes) or distilled is retried tighter
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        if options.size_budget is not None:
            layer_bits = allocate_bits(bit_options, rest, int(target))
            predicted = allocated_bytes(bit_options, rest, layer_bits)
            shared = quantize_with_bits_(model, quant, layer_bits, importance)
            out["layer_bits"] = layer_bits
        else:
            shared = quantize_(model, quant, importance=importance)
        out["seconds"]["kmeans"] = time.perf_counter() - start
        if calibration is not None:
            _fit_to_calibration_(model, shared, released, calibration, options, log, out)
        data = codec.encode(model, meta=meta)
        if options.size_budget is None or len(data) <= options.size_budget:
            break
        log(f"size budget: {len(data):,} bytes as coded, {len(data) - options.size_budget:,} over; retrying tighter")
        # The allocator sizes each layer as nearest-assigned k-means codes it; this file came
        # out len(data) - predicted bytes apart: aim that much (and a margin) lower, and
        # always below the last aim (which may have had slack the allocator could not use).
        target = min(int(target), options.size_budget - (len(data) - predicted)) - 64
    else:
        raise ValueError(f"--size-budget: could not fit {options.size_budget:,} bytes (last try {len(data):,})")
    return _score(out, model, data, released, calibration, options)


def _score(out: dict[str, Any], model: torch.nn.Module, data: bytes, released: dict[str, torch.Tensor],
           calibration: _Calibration | None, options: ImportOptions) -> dict[str, Any]:  # fmt: skip
    """The weight error, the decoded file, and (with calibration) its held-out fidelity."""
    params = dict(model.named_parameters())
    error = sum(float(((params[n].detach() - w) ** 2).sum()) for n, w in released.items())
    energy = sum(float((w**2).sum()) for w in released.values())
    out["weight_error"] = (error / energy) ** 0.5
    _finish(out, model, data)
    if calibration is not None:
        out["fidelity"] = fidelity(logits_of(out["model"], calibration.held_out), calibration.held_logits,
                                   confident=options.confident)  # fmt: skip
    return out


def _refuse_impossible_budget(dense: torch.nn.Module, options: ImportOptions) -> None:
    """A budget below the smallest file (every layer at the narrowest width, sized by
    the real encoder) is refused with a one-line ValueError."""
    if options.size_budget is None:
        return
    options_plain, rest = layer_bit_options(dense, options.quant, [min(BUDGET_BITS)])
    smallest = smallest_file(options_plain, rest)
    if options.size_budget < smallest:
        raise ValueError(f"--size-budget: {options.size_budget:,} bytes is below the smallest file "
                         f"({smallest:,} bytes, every layer at {min(BUDGET_BITS)} bits)")  # fmt: skip


def check_size_budget(file_url: str, options: ImportOptions) -> None:
    """``options.size_budget`` checked against the released file at ``file_url`` before
    any flow starts: ``sqz import-dc`` refuses an impossible budget in one line, with no
    flow run begun (and none of its log lines printed)."""
    from sqz import storage

    if options.size_budget is not None:
        _refuse_impossible_budget(load_dcnet(storage.read_bytes(file_url)), options)


def _finish(out: dict[str, Any], model: torch.nn.Module, data: bytes) -> dict[str, Any]:
    """Decode the file to prove it: ``bit_exact`` says it gives ``model``'s tensors back."""
    decoded = codec.decode(data)
    out["data"], out["model"] = data, decoded
    out["bit_exact"] = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))
    return out


def import_to(file_url: str, out_url: str, options: ImportOptions, *, run_url: str | None = None,
              log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:  # fmt: skip
    """Read the released file, write the .sqz per ``options`` to ``out_url``, and with
    calibration add the held-out fidelity row to ``run_url``'s ``fidelity`` table (default:
    the output's run, else ./sqz-runs/evaluations). Returns a JSON-ready summary."""
    import hashlib

    from sqz import metrics, storage
    from sqz.evaluation import default_run_url

    storage.check_url(out_url, option="OUT")
    source = storage.read_bytes(file_url)
    result = import_released(source, options, log=log)
    data = result["data"]
    storage.write_bytes(out_url, data)
    summary = {key: result.get(key) for key in ("fidelity", "layer_bits", "weight_error", "bit_exact", "seconds", "allocator")}
    summary.update(source_bytes=len(source), size_bytes=len(data), model_url=storage.absolute(out_url), row_url=None)
    fid = result["fidelity"]
    if fid is not None:
        run_url = run_url or default_run_url(out_url)
        row = {"run_id": run_url.rstrip("/").rsplit("/", 1)[-1], "model": storage.absolute(out_url),
               "reference": storage.absolute(file_url), "images": fid["images"],
               **{key: fid[key] for key in ("top1_agreement", "top5_overlap", "kl", "confident_threshold", "confident_images",
                                            "confident_agreement", "flips", "near_tie_images", "near_tie_flips")}}  # fmt: skip
        # One file per output's bytes: importing the same result again replaces its row.
        summary["row_url"] = metrics.write_rows(run_url, "fidelity", [row], writer_id="import-dc-" + hashlib.sha256(data).hexdigest()[:16])
    return summary
