""".sqz format versions 2 (order-0 rANS) and 3 (context-modelled) on the released Deep
Compression SqueezeNet, lossless at 8 bits and re-clustered at 6 bits. Figures only.

    .venv/bin/python bench/bench_codec.py [--net PATH] [--repeat 3]

Per layer: bytes of the layer's streams in version 2 (issue 13's "v1") and version 3
(its "v2"): codebook + positions + codes, or a bias (float32 byte planes, or in version 3
the context-coded floats where smaller: model "float32 context"); the order-0
entropy bound of the codes and gaps (what version 2 approaches, table excluded); and the
seconds to encode and decode that layer's streams (best of --repeat, one core). The
total row adds the file header; "whole file" times encode()/decode() end to end,
building the model included. After the 8-bit table, a check of issue 13's premise (that a
code's output channel predicts it, ~15% by a plug-in estimate): the same estimate on
shuffled codes, and the code lengths an adaptive coder would pay with and without the
channel as context.
"""

from __future__ import annotations

import os

for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(variable, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

RELEASED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models", "squeezenet-deep-compression", "compressed_SqueezeNet.net")


def _best(fn, repeat):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def _layer_times(data: bytes, repeat: int) -> dict[str, tuple[float, float]]:
    """Per tensor: (encode s, decode s) of its version-3 streams."""
    from sqz.compress import codec, context_coder

    header, payload = codec.read_header(data)
    model = codec.decode(data)
    state = model.state_dict()
    times, offset = {}, 0
    for entry in header["tensors"]:
        name = entry["name"]
        size = sum(s[4] for s in entry["streams"])
        section = bytes(payload[offset : offset + size])
        offset += size
        tensor = state[name]

        def encode_one():
            single = codec._Encoder()
            values = tensor.numpy().ravel()
            if entry["kind"] == "shared":
                import numpy as np

                positions = np.flatnonzero(values)
                distinct = np.unique(values[positions])
                codec._shared_streams_v3(single, name, list(tensor.shape), distinct, np.searchsorted(distinct, values[positions]), positions, 0.0)
            else:  # encode() codes a float tensor both ways and keeps the smaller
                single.add(name, list(tensor.shape), "float", [(f"b{i}", p, 256) for i, p in enumerate(codec._byte_planes(values))])
                context_coder.encode_floats(values)

        _, encode_s = _best(encode_one, repeat)
        _, decode_s = _best(lambda: codec._decode_tensor(entry, tensor, section, 3), repeat)
        times[name] = (encode_s, decode_s)
    return times


COLUMNS = ["layer", "v1 (ver 2) B", "v2 (ver 3) B", "v2/v1", "order-0 bound B", "v2 models (codes / positions)", "encode s", "decode s"]


def _table(label: str, model: torch.nn.Module, repeat: int) -> dict:
    """Prints the per-layer table and returns it (for bench/results.py) with the totals."""
    from sqz.compress import codec

    v2 = codec.encode(model, version=2)
    v3, encode_s = _best(lambda: codec.encode(model), repeat)
    decoded, decode_s = _best(lambda: codec.decode(v3), repeat)
    exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))
    rows2 = {r["layer"]: r for r in codec.layer_sizes(v2)}
    rows3 = codec.layer_sizes(v3)
    times = _layer_times(v3, repeat)
    print(f"\n{label}")
    print("| layer | v1 (ver 2) B | v2 (ver 3) B | v2/v1 | order-0 bound B | v2 models (codes / positions) | encode s | decode s |")
    print("| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    rows = []
    total2 = total3 = bound = enc = dec = 0.0
    for r in rows3:
        old = rows2[r["layer"]]
        b2 = old["code_bytes"] + old["index_bytes"] + old["overhead_bytes"]
        b3 = r["code_bytes"] + r["index_bytes"] + r["overhead_bytes"]
        shared = r["bits"] <= 8
        layer_bound = r["entropy_bound_bytes"] if shared else None
        if shared:
            models = f"{r['codes_model'].split()[-1]} / {r['positions_model'].split()[-1]}"
        else:
            models = "float32 context" if r["codes_model"].startswith("float32 context") else "float32 planes"
        e, d = times[r["layer"]]
        total2, total3, enc, dec = total2 + b2, total3 + b3, enc + e, dec + d
        bound += layer_bound or 0
        bound_text = f"{layer_bound:,.0f}" if shared else "-"
        print(f"| {r['layer']} | {b2:,} | {b3:,} | {b3 / b2:.3f} | {bound_text} | {models} | {e:.4f} | {d:.4f} |")
        rows.append([r["layer"], b2, b3, round(b3 / b2, 3), round(layer_bound) if shared else None, models, round(e, 4), round(d, 4)])
    h2, h3 = codec.header_bytes(v2), codec.header_bytes(v3)
    print(f"| header | {h2:,} | {h3:,} | {h3 / h2:.3f} | - | - | - | - |")
    print(f"| **total** | **{len(v2):,}** | **{len(v3):,}** | {len(v3) / len(v2):.3f} | {bound:,.0f} (codes+gaps only) | - | {enc:.3f} | {dec:.3f} |")
    print(f"whole file, one core: encode() {encode_s:.3f} s, decode() {decode_s:.3f} s (model built and loaded included); bit-exact: {exact}")
    rows.append(["header", h2, h3, round(h3 / h2, 3), None, None, None, None])
    rows.append(["total", len(v2), len(v3), round(len(v3) / len(v2), 3), round(bound), "(bound: codes+gaps only)", round(enc, 3), round(dec, 3)])
    return {"label": label, "rows": rows, "v2_bytes": len(v2), "v3_bytes": len(v3), "bound_bytes": round(bound),
            "encode_s": round(encode_s, 3), "decode_s": round(decode_s, 3), "bit_exact": exact}  # fmt: skip


def _adaptive_bytes(symbols, alphabet: int) -> float:
    """Ideal code length in bytes of an adaptive add-1/2 (Krichevsky-Trofimov) estimator over
    ``alphabet`` symbols: what a coder that learns the distribution as it reads pays,
    tables included (it stores none)."""
    import numpy as np
    from scipy.special import gammaln

    _, counts = np.unique(symbols, return_counts=True)
    log_p = gammaln(alphabet / 2) - gammaln(counts.sum() + alphabet / 2) + (gammaln(counts + 0.5) - gammaln(0.5)).sum()
    return float(-log_p / np.log(2) / 8)


def _channel_context_check(model: torch.nn.Module) -> None:
    """Issue 13's premise: "the plug-in conditional entropy of a code given its output
    channel is ~15% below its order-0 entropy". The same plug-in estimate with the codes
    shuffled across each layer (no dependence on the channel left, channel sizes kept)
    tells how much of that is the estimator's bias (hundreds of codes per channel, 255
    values); the adaptive code lengths tell what a coder can gain from the channel. The
    plug-in entropy is the codec's own order-0 bound (the table's column)."""
    import numpy as np

    from sqz.compress.codec import _entropy_bytes

    rng = np.random.default_rng(0)
    sizes = dict.fromkeys(("order0", "channel", "shuffled", "adaptive0", "adaptive_channel"), 0.0)
    for name, weight in model.state_dict().items():
        if weight.dim() < 2:
            continue
        flat = weight.numpy().reshape(weight.shape[0], -1)
        rows, columns = np.nonzero(flat)
        distinct, codes = np.unique(flat[rows, columns], return_inverse=True)
        starts = np.searchsorted(rows, np.arange(flat.shape[0] + 1))  # np.nonzero is row-major: each channel's run
        runs = [slice(a, b) for a, b in zip(starts[:-1], starts[1:]) if b > a]
        shuffled = rng.permutation(codes)
        sizes["order0"] += _entropy_bytes(codes)
        sizes["channel"] += sum(_entropy_bytes(codes[run]) for run in runs)
        sizes["shuffled"] += sum(_entropy_bytes(shuffled[run]) for run in runs)
        sizes["adaptive0"] += _adaptive_bytes(codes, len(distinct))
        sizes["adaptive_channel"] += sum(_adaptive_bytes(codes[run], len(distinct)) for run in runs)
    return sizes


def _print_channel_check(sizes: dict) -> None:
    print("\nissue 13's premise, codes given their output channel (released 8-bit codes, all 26 layers):")
    print(f"- plug-in entropy: order-0 {sizes['order0']:,.0f} B; given the channel {sizes['channel']:,.0f} B "
          f"({sizes['channel'] / sizes['order0'] - 1:+.1%})")
    print(f"- the same with the codes shuffled across each layer (no dependence left): {sizes['shuffled']:,.0f} B "
          f"({sizes['shuffled'] / sizes['order0'] - 1:+.1%}); dependence on the channel: {sizes['shuffled'] - sizes['channel']:,.0f} B")
    print(f"- adaptive (add-1/2) code length: order-0 {sizes['adaptive0']:,.0f} B; one model per channel "
          f"{sizes['adaptive_channel']:,.0f} B ({sizes['adaptive_channel'] / sizes['adaptive0'] - 1:+.1%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default=RELEASED, help="compressed_SqueezeNet.net")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write bench/results/codec.json (bench/results.py)")
    args = parser.parse_args()
    if not os.path.exists(args.net):
        raise SystemExit(f"--net: {args.net} does not exist")
    torch.set_num_threads(1)

    from sqz.compress import codec
    from sqz.compress.dcnet import load_dcnet
    from sqz.compress.kmeans import quantize_
    from sqz.config import QuantConfig

    with open(args.net, "rb") as f:
        released = load_dcnet(f.read())
    codec.decode(codec.encode(released))  # numba compiles (cached on disk after the first run)
    lossless = _table("released model, 8-bit codes, lossless", released, args.repeat)
    channel = _channel_context_check(released)
    _print_channel_check(channel)
    quantize_(released, QuantConfig(bits=6, method="exact"))  # as `sqz import-dc --bits 6`
    six_bits = _table("released model re-clustered at 6 bits (exact k-means, same sparsity)", released, args.repeat)
    if args.record:
        _record(lossless, six_bits, channel, args)


def _record(lossless: dict, six_bits: dict, channel: dict, args: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results import record

    summary = [[t["label"], t["v2_bytes"], t["v3_bytes"], t["bound_bytes"], t["encode_s"], t["decode_s"], t["bit_exact"]]
               for t in (lossless, six_bits)]  # fmt: skip
    figures = {
        "title": ".sqz format on the released Deep Compression SqueezeNet",
        "headline": {
            "released SqueezeNet (675,763 B .net) as .sqz, lossless": f"{lossless['v3_bytes']:,} B",
            "re-clustered at 6 bits, same sparsity": f"{six_bits['v3_bytes']:,} B",
        },
        "tables": [
            {"title": "whole file: bytes per format version, and seconds on one core (model construction included)",
             "columns": ["file", "version 2 B", "version 3 B", "order-0 bound of codes + gaps B", "encode s", "decode s",
                         "bit-exact"], "rows": summary},
            {"title": lossless["label"], "columns": COLUMNS, "rows": lossless["rows"]},
            {"title": six_bits["label"], "columns": COLUMNS, "rows": six_bits["rows"]},
            {"title": "issue 13's premise: plug-in entropy of the 8-bit codes given their output channel, and a control",
             "columns": ["estimate", "bytes"],
             "rows": [["plug-in, order 0", round(channel["order0"])], ["plug-in, given the channel", round(channel["channel"])],
                      ["plug-in, given the channel, codes shuffled across each layer (control)", round(channel["shuffled"])],
                      ["adaptive add-1/2, one model per layer", round(channel["adaptive0"])],
                      ["adaptive add-1/2, one model per channel", round(channel["adaptive_channel"])]]},
        ],
        "load_average_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip
    print(f"recorded {record('codec', figures, command='python bench/bench_codec.py --record')}")


if __name__ == "__main__":
    main()
