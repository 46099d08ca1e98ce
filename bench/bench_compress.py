"""Deep Compression speed on SqueezeNet v1.0 at ImageNet size, one core. Figures only.

    .venv/bin/python bench/bench_compress.py [--skip-baselines]

Weights: torchvision-style initialised squeezenet1_0 (1,248,424 parameters; distinct
float32 values like a trained model's), pruned per layer to the released model's 33.4%
density (about 416k non-zero). Prints wall seconds of prune, k-means (exact, ours), encode
and decode, beside two baselines clustering the same non-zero weights per layer:
ckwrap (Ckmeans.1d.dp, exact) and scikit-learn KMeans (Lloyd, linear init, one run).
Then the indexed model (uint8 indices in memory) against the dense one: resident weight
bytes and forward images/s at 224x224.
"""

from __future__ import annotations

import os

# One core for every library (set before numpy/torch/sklearn start their thread pools).
for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-baselines", action="store_true", help="time only sqz (ckwrap at k=256 takes ~10 s)")
    parser.add_argument("--density", type=float, default=0.334)
    parser.add_argument("--record", action="store_true", help="write bench/results/compress.json (bench/results.py)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sqz.compress.codec import decode, encode
    from sqz.compress.exact_kmeans import exact_kmeans_1d
    from sqz.compress.indexed import to_indexed, weight_bytes
    from sqz.compress.kmeans import quantize_
    from sqz.compress.prune import prunable_parameters, prune_
    from sqz.config import PruneConfig, QuantConfig
    from sqz.models import build_model

    torch.manual_seed(0)
    model = build_model("squeezenet1_0", num_classes=1000)
    exact_kmeans_1d(np.random.default_rng(0).standard_normal(1000), 8)  # numba compile (cached on disk after the first run)
    _, prune_s = _timed(prune_, model, PruneConfig(mode="density", amount=args.density))
    layers = {name: p.detach().flatten().numpy() for name, p in prunable_parameters(model).items()}
    nonzero = {name: w[w != 0].astype(np.float64) for name, w in layers.items()}
    total = sum(v.size for v in nonzero.values())
    print(f"squeezenet1_0: {sum(w.size for w in layers.values()):,} weights, {total:,} non-zero after pruning ({prune_s:.2f} s)")

    print(f"\n{'k-means, whole model, one core':44} {'k=256':>8} {'k=64':>8}")
    kmeans_rows = []
    for label, cluster in _methods(args.skip_baselines):
        seconds = []
        for k in (256, 64):
            start = time.perf_counter()
            for values in nonzero.values():
                cluster(values, k)
            seconds.append(time.perf_counter() - start)
        print(f"{label:44} {seconds[0]:>7.2f}s {seconds[1]:>7.2f}s")
        kmeans_rows.append([label, round(seconds[0], 2), round(seconds[1], 2)])

    # Weighted exact k-means (sensitivity weights: a diagonal Fisher). The gradient pass
    # is timed apart: it depends on the calibration set, not on the clustering.
    from sqz.fidelity import fisher_importance

    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    importance, fisher_s = _timed(fisher_importance, model, [images], micro_batch=4)
    weights = {name: importance[name].flatten().double().numpy()[layers[name] != 0] for name in nonzero}
    weights = {name: np.maximum(w, 1e-6 * w.mean()) for name, w in weights.items()}  # as quantize_ floors them
    seconds = []
    for k in (256, 64):
        start = time.perf_counter()
        for name, values in nonzero.items():
            exact_kmeans_1d(values, k, weights=weights[name])
        seconds.append(time.perf_counter() - start)
    print(f"{'sqz exact, Fisher-weighted':44} {seconds[0]:>7.2f}s {seconds[1]:>7.2f}s"
          f"   (gradient pass, 8 images: {fisher_s:.2f} s, not included)")  # fmt: skip
    kmeans_rows.append(["sqz exact, Fisher-weighted (gradient pass not included)", round(seconds[0], 2), round(seconds[1], 2)])

    quantized = build_model("squeezenet1_0", num_classes=1000)
    quantized.load_state_dict(model.state_dict())
    # 255 shared values + the pruned zeros fill a 256-entry codebook, as in the released
    # model, so the indexed model below keeps one byte per weight.
    _, quantize_s = _timed(quantize_, quantized, QuantConfig(bits=8, clusters=255, method="exact"))
    data, encode_s = _timed(encode, quantized)
    decoded, decode_s = _timed(decode, data)
    print(f"\nfull compress at 8 bits: prune {prune_s:.2f} s + exact quantize {quantize_s:.2f} s + encode {encode_s:.2f} s "
          f"= {prune_s + quantize_s + encode_s:.2f} s; file {len(data):,} bytes")  # fmt: skip
    print(f"decode: {decode_s:.3f} s")

    dense = decoded.eval()
    dense_bytes = weight_bytes(dense)
    x = torch.randn(8, 3, 224, 224)
    dense_ips = _images_per_second(dense, x)
    indexed = to_indexed(decoded).eval()
    print(f"\n{'model in memory':28} {'weight bytes':>14} {'images/s (224px, batch 8, 1 thread)':>38}")
    print(f"{'dense float32':28} {dense_bytes:>14,} {dense_ips:>38.1f}")
    indexed_ips = _images_per_second(indexed, x)
    print(f"{'indexed (uint8 + codebook)':28} {weight_bytes(indexed):>14,} {indexed_ips:>38.1f}")
    if not args.record:
        return
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results import record

    figures = {
        "title": "Deep Compression speed on SqueezeNet v1.0, one core",
        "headline": {"prune + exact k-means + encode, SqueezeNet v1.0 at 8 bits, one core": f"{prune_s + quantize_s + encode_s:.2f} s"},
        "tables": [
            {"title": f"k-means of the {total:,} non-zero weights (density {args.density}), whole model, seconds",
             "columns": ["method", "k=256", "k=64"], "rows": kmeans_rows},
            {"title": "full compress at 8 bits, seconds", "columns": ["prune", "exact quantize", "encode", "total", "file bytes", "decode"],
             "rows": [[round(prune_s, 2), round(quantize_s, 2), round(encode_s, 2), round(prune_s + quantize_s + encode_s, 2),
                       len(data), round(decode_s, 3)]]},
            {"title": "model in memory: weight bytes and forward images/s (224 px, batch 8, 1 thread)",
             "columns": ["model", "weight bytes", "images/s"],
             "rows": [["dense float32", dense_bytes, round(dense_ips, 1)],
                      ["indexed (uint8 + codebook)", weight_bytes(indexed), round(indexed_ips, 1)]]},
        ],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    print(f"recorded {record('compress', figures, command='python bench/bench_compress.py --record')}")


def _methods(skip_baselines: bool):
    from sqz.compress.exact_kmeans import exact_kmeans_1d

    yield "sqz exact (numba, Lagrangian DP)", exact_kmeans_1d
    if skip_baselines:
        return
    import ckwrap
    from sklearn.cluster import KMeans

    yield "ckwrap (Ckmeans.1d.dp, exact)", lambda v, k: ckwrap.ckmeans(v, k)

    def lloyd(values, k):
        init = np.linspace(values.min(), values.max(), k).reshape(-1, 1)
        KMeans(n_clusters=k, init=init, n_init=1, algorithm="lloyd").fit(values.reshape(-1, 1))

    yield "scikit-learn KMeans (Lloyd, linear init)", lloyd


@torch.no_grad()
def _images_per_second(model: torch.nn.Module, x: torch.Tensor, repeats: int = 3) -> float:
    model(x)
    start = time.perf_counter()
    for _ in range(repeats):
        model(x)
    return repeats * x.shape[0] / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
