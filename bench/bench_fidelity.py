"""Fidelity of the re-clustered released SqueezeNet to the dense one, vs file bytes.

By default it prints issue 36's table: `import-dc --calibrate photos` (core
``sqz.import_dc.import_released``, default options) at uniform 7 and 6 bits and under
``--budgets`` (470,000 and 430,000 B), each with top-1 agreement, the agreement on the
held-out crops the dense model is sure of (softmax top-1 >= 0.5) and their share, top-5
overlap, KL and flips (near-ties); then the allocator's guarantee checked on the held-out
crops (each budgeted file against the best uniform width at no more bytes), the allocator's
own check on calibration crops, and the targets, met or MISSED. Recorded in
bench/results/fidelity.json.

    python bench/bench_fidelity.py [--budgets 470000,430000] [--uniform 7,6]

``--compare`` runs the older exploration instead (below): prints (never asserts) the issue-12 targets: at <= 430,000 B, >= 95% top-1 agreement
and >= 97% top-5 overlap on held-out crops; at <= 372,000 B, >= 90% top-1 agreement.
Rows: uniform 8/7/6/5/4 bits and the per-layer choice under each byte budget, each with
the clustering weighted by nothing (weight MSE) or by the diagonal Fisher, the weights
assigned to the nearest centroid or by GPTQ (error-compensated, ``--assign``; "gptq-seq"
takes each layer's inputs from the re-assigned earlier layers, "gptq-dense" from the dense
model), and without / with centroid distillation; and (``--extra-prune``) uniform widths
with a share of the kept weights pruned as well (density as the other byte lever). All
figures are on the held-out photos (scenes never used for calibration); the count of
held-out crops whose dense top-1 and top-2 classes are near-ties says how much room for
change a top-1 agreement target leaves. The weighted k-means' speed is timed by bench_compress.py (on a
SqueezeNet v1.0 with 415,643 distinct weights; the released layers already hold at most
256 values each, so k = 256 on them is trivial).

    python bench/bench_fidelity.py [--distill-steps 48] [--calibration-images 384]

CPU-sized defaults: a few minutes per distilled row on two cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from sqz.compress import codec  # noqa: E402
from sqz.compress.dcnet import load_dcnet  # noqa: E402
from sqz.compress.gptq import gptq_  # noqa: E402
from sqz.compress.kmeans import distill_codebooks_, quantize_  # noqa: E402
from sqz.config import ImportOptions, QuantConfig  # noqa: E402
from sqz.data import normalize_batch  # noqa: E402
from sqz.fidelity import (allocate_bits, allocated_bytes, budget_options, calibration_sets, fidelity,  # noqa: E402
                          fisher_importance, logits_of, quantize_with_bits_, subsample)  # fmt: skip
from sqz.import_dc import BUDGET_BITS  # noqa: E402

RELEASED = os.environ.get("SQZ_RELEASED_NET", os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "models", "squeezenet-deep-compression", "compressed_SqueezeNet.net"))  # fmt: skip


def prepare(images: torch.Tensor) -> torch.Tensor:
    return normalize_batch(images, "caffe")


def _cached(folder: str | None, name: str) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = os.path.join(folder, name + ".safetensors") if folder else None
    return load_file(path) if path and os.path.exists(path) else None


def _store(folder: str | None, name: str, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    if folder:
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, name + ".safetensors"))


def issue_table(budgets: list[int], uniform: list[int], confident: float) -> int:
    """Issue 36's table from import-dc's own code path (see the module docstring)."""
    from sqz.import_dc import import_released

    with open(_released_path(), "rb") as f:
        source = f.read()
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)", flush=True)
    rows = []
    # The budgets first: they fill the cache of per-width copies (and Fisher) the rest reuse.
    for label, kwargs in ([(f"--size-budget {B}", {"size_budget": B}) for B in budgets]
                          + [(f"uniform {b} bits", {"bits": b}) for b in uniform]):  # fmt: skip
        start = time.perf_counter()
        result = import_released(source, ImportOptions(calibrate="photos", confident=confident, **kwargs),
                                 log=lambda line: print(f"  {line}", flush=True))  # fmt: skip
        fid = result["fidelity"]
        rows.append({"file": label, "budget": kwargs.get("size_budget"), "bits": kwargs.get("bits"), "bytes": len(result["data"]),
                     "fidelity": fid, "layer_bits": result["layer_bits"], "allocator": result.get("allocator"),
                     "seconds": time.perf_counter() - start})  # fmt: skip
        print(f"{label}: {len(result['data']):,} B, {time.perf_counter() - start:.0f} s; load average "
              f"{os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    rows.sort(key=lambda r: -r["bytes"])
    share = 100.0 * rows[0]["fidelity"]["confident_images"] / rows[0]["fidelity"]["images"]
    conf_col = f"agreement where dense top-1 prob >= {confident:g} ({share:.0f}% of crops)"
    columns = ["file", "bytes", "top-1 agreement", conf_col, "top-5 overlap", "KL", "flips (near-tie)", "s"]
    table = [[r["file"], r["bytes"], round(r["fidelity"]["top1_agreement"], 1),
              None if r["fidelity"]["confident_agreement"] is None else round(r["fidelity"]["confident_agreement"], 1),
              round(r["fidelity"]["top5_overlap"], 1), round(r["fidelity"]["kl"], 4),
              f"{r['fidelity']['flips']} ({r['fidelity']['near_tie_flips']})", round(r["seconds"])] for r in rows]  # fmt: skip
    print(f"\nheld-out photos: {rows[0]['fidelity']['images']} crops, {rows[0]['fidelity']['confident_images']} confident, "
          f"{rows[0]['fidelity']['near_tie_images']} near-ties (dense top-1 and top-2 within 0.02)\n")  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("| --- | " + " | ".join("---:" for _ in columns[1:]) + " |")
    for line in table:
        print(f"| {line[0]} | {line[1]:,} | {line[2]:.1f}% | {'n/a' if line[3] is None else f'{line[3]:.1f}%'} | "
              f"{line[4]:.1f}% | {line[5]:.4f} | {line[6]} | {line[7]} |")  # fmt: skip
    for r in rows:
        if r["layer_bits"]:
            counts = {b: sum(1 for v in r["layer_bits"].values() if v == b) for b in sorted(set(r["layer_bits"].values()))}
            print(f"{r['file']}: layers per bit width {counts}")
            if r["allocator"]:
                print(f"  allocator check on {r['allocator']['check_images']} calibration crops: {r['allocator']['summary']}")

    # The guarantee, on the held-out crops: no budgeted file worse than a uniform one at no more bytes.
    print()
    checks = []
    for r in rows:
        if r["budget"] is None:
            continue
        cheaper = [u for u in rows if u["bits"] is not None and u["bytes"] <= r["bytes"]]
        if not cheaper:
            print(f"check {r['file']}: no uniform width measured at <= {r['bytes']:,} B")
            continue
        best = max(cheaper, key=lambda u: (u["fidelity"]["top1_agreement"], -u["fidelity"]["kl"]))
        ok = (r["fidelity"]["top1_agreement"] >= best["fidelity"]["top1_agreement"]
              and r["fidelity"]["kl"] <= best["fidelity"]["kl"])  # fmt: skip
        checks.append({"file": r["file"], "versus": best["file"], "ok": ok})
        print(f"check {r['file']} ({r['bytes']:,} B) vs the best uniform width at no more bytes, {best['file']} "
              f"({best['bytes']:,} B), on the held-out crops: top-1 agreement {r['fidelity']['top1_agreement']:.1f}% vs "
              f"{best['fidelity']['top1_agreement']:.1f}%, KL {r['fidelity']['kl']:.4f} vs {best['fidelity']['kl']:.4f} -> "
              f"{'not worse' if ok else 'WORSE'}")  # fmt: skip

    def verdict(name, need_top1, need_confident, budget):
        row = next((r for r in rows if r["budget"] == budget), None)
        if row is None:
            print(f"target {name}: not measured (add {budget} to --budgets)")
            return None
        fid = row["fidelity"]
        met = ((need_top1 is None or fid["top1_agreement"] >= need_top1)
               and (need_confident is None or (fid["confident_agreement"] or 0) >= need_confident)
               and row["bytes"] <= budget)  # fmt: skip
        needs = ", ".join(x for x in (f">= {need_top1:g}% top-1" if need_top1 else "",
                                      f">= {need_confident:g}% confident" if need_confident else "") if x)  # fmt: skip
        print(f"target {name} ({needs}): {row['bytes']:,} B, top-1 agreement {fid['top1_agreement']:.1f}%, confident "
              f"{fid['confident_agreement'] or 0:.1f}% -> {'met' if met else 'MISSED'}")  # fmt: skip
        return met

    print()
    targets = {"470000": verdict("--size-budget 470000", 95.0, 99.5, 470_000),
               "430000": verdict("--size-budget 430000", 93.0, 99.0, 430_000),
               "moonshot": verdict("moonshot <= 430,000 B", 95.0, None, 430_000)}
    from results import record

    headline = {f"{r['file']} top-1 / confident": f"{r['fidelity']['top1_agreement']:.1f}% / "
                f"{r['fidelity']['confident_agreement'] or 0:.1f}% at {r['bytes']:,} B" for r in rows}  # fmt: skip
    headline.update({f"target {k}": ("met" if v else "MISSED") for k, v in targets.items() if v is not None})
    figures = {"tables": [{"title": "Held-out photos: fidelity of import-dc's files to the dense released model",
                           "columns": columns, "rows": table}],
               "headline": headline, "rows": rows, "checks": checks, "targets": targets,
               "load_average": list(os.getloadavg())}  # fmt: skip
    command = "python bench/bench_fidelity.py " + " ".join(sys.argv[1:])
    print(f"recorded {record('fidelity', figures, command=command.strip())}")
    return 0


def _released_path() -> str:
    return RELEASED if os.path.exists(RELEASED) else "/work/shared/models/squeezenet-deep-compression/compressed_SqueezeNet.net"


def main() -> int:
    if "--compare" not in sys.argv:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--budgets", default="470000,430000")
        parser.add_argument("--uniform", default="7,6")
        parser.add_argument("--confident", type=float, default=0.5)
        parser.add_argument("--compare", action="store_true", help="the older exploration (see the docstring)")
        args = parser.parse_args()
        try:
            budgets = [int(b) for b in args.budgets.split(",") if b]
            uniform = [int(b) for b in args.uniform.split(",") if b]
        except ValueError:
            parser.error(f"--budgets/--uniform: want comma-separated integers, got {args.budgets!r} / {args.uniform!r}")
        ImportOptions(confident=args.confident)  # a threshold outside (0, 1): one line before work
        return issue_table(budgets, uniform, args.confident)
    sys.argv.remove("--compare")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default=RELEASED if os.path.exists(RELEASED) else "/work/shared/models/squeezenet-deep-compression/compressed_SqueezeNet.net")
    parser.add_argument("--bits", default="8,7,6,5,4")
    parser.add_argument("--budgets", default="430000,372000")
    parser.add_argument("--calibration-images", type=int, default=384)
    parser.add_argument("--fisher-images", type=int, default=256)
    parser.add_argument("--distill-steps", type=int, default=48)
    parser.add_argument("--distill-batch", type=int, default=16)
    parser.add_argument("--distill-lr", type=float, default=1e-4)
    parser.add_argument("--distill", default="6:none,6:fisher,5:fisher,b430000:fisher,b372000:fisher",
                        help="which rows also get a distilled row: all, or TARGET[:WEIGHTING] items, e.g. 6,b430000:fisher "
                        "(a distilled row costs minutes on CPU)")  # fmt: skip
    parser.add_argument("--weightings", default="none,fisher")
    parser.add_argument("--assign", default="nearest,gptq-dense",
                        help="assignments to compare: nearest, gptq-seq (sequential inputs), gptq-dense (dense inputs)")
    parser.add_argument("--gptq-images", type=int, default=128, help="calibration crops the GPTQ Hessians see")
    parser.add_argument("--gptq-refit", type=int, default=1, help="1: refit each codebook to the GPTQ labels, 0: keep it")
    parser.add_argument("--gptq-rounds", type=int, default=3, help="GPTQ assignment + refit rounds per layer (import-dc's default)")
    parser.add_argument("--budget-kl-images", type=int, default=ImportOptions().budget_kl_images,
                        help="budget rows: calibration crops on which each layer's KL at 4 bits scales its costs "
                        "(import-dc's default; 0: unscaled)")  # fmt: skip
    parser.add_argument("--extra-prune", default="7:0.05,7:0.1",
                        help="BITS:SHARE rows (Fisher weighting, GPTQ from dense inputs): uniform BITS with SHARE of every "
                        "layer's kept weights pruned as well, chosen and compensated by GPTQ as SparseGPT (density as a "
                        "byte lever beside bits); '' for none")  # fmt: skip
    parser.add_argument("--cache", default=None, help="folder keeping the teacher logits and the Fisher importance "
                        "(safetensors) between runs with the same settings")  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    bit_widths = [int(b) for b in args.bits.split(",") if b]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    weightings = [w for w in args.weightings.split(",") if w]
    assigns = [a for a in args.assign.split(",") if a]
    try:
        prune_rows = [(int(b), float(p)) for b, p in (item.split(":") for item in args.extra_prune.split(",") if item)]
    except ValueError:
        parser.error(f"--extra-prune: want BITS:SHARE items such as 7:0.05, got {args.extra_prune!r}")
    if any(not (1 <= b <= 8 and 0 <= p < 1) for b, p in prune_rows):
        parser.error(f"--extra-prune: BITS in 1..8 and SHARE in [0, 1), got {args.extra_prune!r}")
    unknown = sorted(set(assigns) - {"nearest", "gptq-seq", "gptq-dense"})
    if unknown:
        parser.error(f"--assign: unknown {', '.join(unknown)} (nearest, gptq-seq, gptq-dense)")

    with open(args.net, "rb") as f:
        dense = load_dcnet(f.read())
    start = time.perf_counter()
    sets = calibration_sets("photos")
    calibration = subsample(sets.calibration, args.calibration_images)
    cached = _cached(args.cache, f"teacher-{args.calibration_images}")
    if cached is None:
        cached = {"held": logits_of(dense, sets.held_out), "calibration": logits_of(dense, calibration)}
        _store(args.cache, f"teacher-{args.calibration_images}", cached)
    held_logits, calibration_logits = cached["held"], cached["calibration"]
    print(f"photos: {len(sets.calibration)} calibration crops ({len(calibration)} used), {len(sets.held_out)} held-out "
          f"crops of other scenes; teacher logits {time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    # Near-ties bound top-1 agreement: a crop whose dense top-1 and top-2 classes are almost
    # equally likely flips under almost any change to the weights.
    top2 = held_logits.softmax(1).topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    near_tie = gap < 0.02  # the table's "flips (near-tie)": flipped crops, and of them those near-ties
    print(f"held-out crops whose dense top-1 and top-2 probabilities differ by < 0.01: {int((gap < 0.01).sum())}, "
          f"< 0.02: {int(near_tie.sum())}, < 0.05: {int((gap < 0.05).sum())} (of {len(gap)}; dense top-1 "
          f"probability median {float(top2[:, 0].median()):.2f})", flush=True)  # fmt: skip

    start = time.perf_counter()
    fisher_set = subsample(calibration, args.fisher_images, 1)
    importance = _cached(args.cache, f"fisher-{args.calibration_images}-{args.fisher_images}")
    if importance is None:
        importance = fisher_importance(copy.deepcopy(dense), (prepare(fisher_set[i : i + 32]) for i in range(0, len(fisher_set), 32)))
        _store(args.cache, f"fisher-{args.calibration_images}-{args.fisher_images}", importance)
        print(f"Fisher pass (gradients of {len(fisher_set)} crops, micro-batches of 4): {time.perf_counter() - start:.1f} s", flush=True)
    else:
        print("Fisher importance: from the cache", flush=True)

    distill_all = args.distill == "all"
    distill_for = set(args.distill.split(","))
    targets = [(f"{b} bits", b, None, str(b)) for b in bit_widths] + [(f"<= {B:,} B", None, B, f"b{B}") for B in budgets]
    print()
    header = f"| {'target':<15} | {'weighting':<9} | {'assign':<10} | {'distill':>7} | {'bytes':>9} | {'top-1 agree %':>13} | {'top-5 overlap %':>15} | {'KL':>6} | {'flips (near-tie)':>16} | {'s':>5} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|", flush=True)
    rows = []
    quant = QuantConfig(bits=8, method="exact")

    released = {name: p.detach().clone() for name, p in dense.named_parameters() if p.dim() > 1}
    gptq_set = subsample(calibration, args.gptq_images, 2)
    bit_options: dict = {}  # (weighting, assign) -> the allocator's per-layer options, computed once

    def clustered(bits, budget, weights, weighting, assign, prune=0.0):
        target = budget
        for _ in range(4):  # GPTQ's labels code to other sizes than nearest's: over budget, retry tighter (as import-dc)
            model = copy.deepcopy(dense)
            if budget is not None:
                if (weighting, assign) not in bit_options:  # as import-dc: with KL scaling, widths costed as GPTQ assigns them
                    reassign = None
                    if args.budget_kl_images and assign == "gptq-dense":

                        def reassign(m, s):
                            gptq_(m, s, released, gptq_set, prepare=prepare, inputs_from="dense", refit=bool(args.gptq_refit),
                                  rounds=args.gptq_rounds)  # fmt: skip

                    probe = subsample(calibration, args.budget_kl_images, 3) if args.budget_kl_images else None  # import-dc's: seed 0 + 3
                    bit_options[(weighting, assign)] = budget_options(dense, quant, BUDGET_BITS, weights, assign=reassign,
                                                                      kl_images=probe)  # fmt: skip
                layer_bits = allocate_bits(*bit_options[(weighting, assign)], target)
                predicted = allocated_bytes(*bit_options[(weighting, assign)], layer_bits)
                shared = quantize_with_bits_(model, quant, layer_bits, weights)
            else:
                layer_bits, shared = None, quantize_(model, QuantConfig(bits=bits, method="exact"), importance=weights)
            if assign != "nearest":
                inputs_from = {"gptq-seq": "sequential", "gptq-dense": "dense"}[assign]
                gptq_(model, shared, released, gptq_set, prepare=prepare, inputs_from=inputs_from, refit=bool(args.gptq_refit),
                      rounds=args.gptq_rounds, prune=dict.fromkeys(released, prune) if prune else None)  # fmt: skip
            size = len(codec.encode(model))
            if budget is None or size <= budget:
                break
            target = min(target, budget - (size - predicted)) - 64
        return model, shared, layer_bits

    def report(label, weighting, assign, steps, model, start):
        data = codec.encode(model)
        logits = logits_of(codec.decode(data), sets.held_out)
        fid = fidelity(logits, held_logits)
        flips = f"{fid['flips']} ({fid['near_tie_flips']})"
        row = (label, f"{weighting}/{assign}", steps, len(data), fid, time.perf_counter() - start)
        rows.append(row)
        print(f"| {label:<15} | {weighting:<9} | {assign:<10} | {steps:>7} | {len(data):>9,} | {fid['top1_agreement']:>13.1f} | "
              f"{fid['top5_overlap']:>15.1f} | {fid['kl']:>6.3f} | {flips:>16} | {row[5]:>5.0f} |", flush=True)  # fmt: skip

    # Plain rows first (seconds each), then the distilled ones (minutes each on CPU).
    distilled = []
    for label, bits, budget, key in targets:
        for weighting in weightings:
            weights = importance if weighting == "fisher" else None
            for assign in assigns:
                start = time.perf_counter()
                model, shared, layer_bits = clustered(bits, budget, weights, weighting, assign)
                report(label, weighting, assign, 0, model, start)
                if layer_bits is not None and assign == assigns[0]:
                    counts = {b: sum(1 for v in layer_bits.values() if v == b) for b in sorted(set(layer_bits.values()))}
                    print(f"|   {weighting} layers per bit width: {counts}", flush=True)
                if args.distill_steps and (distill_all or key in distill_for or f"{key}:{weighting}" in distill_for):
                    distilled.append((label, bits, budget, weighting, assign))
    for bits, share in prune_rows:
        start = time.perf_counter()
        model, _, _ = clustered(bits, None, importance, "fisher", "gptq-dense", prune=share)
        report(f"{bits} b +{share:.0%} pruned", "fisher", "gptq-dense", 0, model, start)
    for label, bits, budget, weighting, assign in distilled:
        start = time.perf_counter()
        model, shared, _ = clustered(bits, budget, importance if weighting == "fisher" else None, weighting, assign)
        distill_codebooks_(model, shared, calibration, calibration_logits, steps=args.distill_steps, lr=args.distill_lr,
                           batch_size=args.distill_batch, prepare=prepare)  # fmt: skip
        report(label, weighting, assign, args.distill_steps, model, start)

    print()
    for budget, need_top1, need_top5 in ((430_000, 95.0, 97.0), (372_000, 90.0, None)):
        fitting = [r for r in rows if r[3] <= budget]
        if not fitting:
            print(f"target <= {budget:,} B: no row fits")
            continue
        best = max(fitting, key=lambda r: (r[4]["top1_agreement"], r[4]["top5_overlap"]))
        verdict = best[4]["top1_agreement"] >= need_top1 and (need_top5 is None or best[4]["top5_overlap"] >= need_top5)
        print(f"target <= {budget:,} B: best {best[0]} / {best[1]} / distill {best[2]}: {best[3]:,} B, top-1 agreement "
              f"{best[4]['top1_agreement']:.1f}% (need {need_top1:g}), top-5 overlap {best[4]['top5_overlap']:.1f}%"
              + (f" (need {need_top5:g})" if need_top5 else "") + f" -> {'met' if verdict else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
