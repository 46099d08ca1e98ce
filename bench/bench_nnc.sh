#!/usr/bin/env bash
# NNCodec (Fraunhofer HHI's MPEG-7 NNR reference coder, DeepCABAC) beside sqz on the same
# quantized weights of the released Deep Compression SqueezeNet. Optional: not in `make test`.
#
#   bash bench/bench_nnc.sh [compressed_SqueezeNet.net] [--bits 6]
#
# NNCodec pins numpy<2, so it gets its own venv under .work/nnc-venv. Only its C++ entropy
# coder (nncodec.extensions.deepCABAC, built from the PyPI sdist with pybind11) is used:
# the package's Python side imports torch/opencv, which this comparison does not need.
# Both coders see the same signed levels per layer (0 = pruned, -r / +r = the r-th used
# codebook value below / above zero, as NNR's codebook mode indexes them). NNCodec's row
# also counts what it would need beside the levels: the used codebook values and the
# biases as raw float32. sqz's row is the whole .sqz file (header, CRCs and all).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NET=$ROOT/../shared/models/squeezenet-deep-compression/compressed_SqueezeNet.net
# The model file is optional and positional; options such as --bits may come first.
if [ $# -gt 0 ] && [[ $1 != --* ]]; then NET=$1; shift; fi
if [ ! -f "$NET" ]; then
  echo "bench_nnc.sh: no such model file: $NET" >&2
  exit 2
fi
# The only option: --bits N (re-cluster to N bits first, 1..8). Checked here, before the
# venv is built, so that a typo costs one line instead of minutes.
if [ $# -gt 0 ] && ! { [ $# -eq 2 ] && [ "$1" = --bits ] && [[ $2 =~ ^[1-8]$ ]]; }; then
  echo "bench_nnc.sh: expected [MODEL.net] [--bits 1..8], got: $*" >&2
  exit 2
fi
BITS=${2:-}  # empty: the released codebooks as they are
PROJECT_PY=${PROJECT_PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
VENV=$ROOT/.work/nnc-venv
NNC_VERSION=2.1.3
mkdir -p .work

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import nncodec.extensions.deepCABAC" 2>/dev/null; then
  echo "building $VENV (nncodec $NNC_VERSION from source, numpy<2; a few minutes)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet 'numpy<2' 'pybind11>=2.6.2' setuptools wheel
  # --no-deps: its declared dependencies (torch, opencv, pandas...) serve the parts not used here
  "$VENV/bin/pip" install --quiet --no-deps --no-build-isolation "nncodec==$NNC_VERSION"
fi

LEVELS=$ROOT/.work/nnc-levels.npz
# 1. with the project's environment: the levels, codebooks and biases, and sqz's bytes
PYTHONPATH=$ROOT "$PROJECT_PY" - "$NET" "$LEVELS" "$BITS" <<'PY'
import sys, json
import numpy as np
from sqz.compress.codec import encode
from sqz.compress.dcnet import load_dcnet
from sqz.compress.kmeans import quantize_
from sqz.config import QuantConfig

net, out = sys.argv[1], sys.argv[2]
bits = int(sys.argv[3]) if sys.argv[3] else None  # checked by the shell above
model = load_dcnet(open(net, "rb").read())
if bits:
    quantize_(model, QuantConfig(bits=bits, method="exact"))
arrays, biases = {}, 0
for name, tensor in model.state_dict().items():
    values = tensor.numpy()
    if tensor.dim() < 2:
        biases += values.size
        continue
    distinct = np.unique(values[values != 0])
    negatives = int(np.searchsorted(distinct, 0))
    index = np.searchsorted(distinct, values)
    levels = np.where(values == 0, 0, np.where(index < negatives, index - negatives, index - negatives + 1))
    arrays[f"levels/{name}"] = levels.astype(np.int32).reshape(values.shape[0], -1)
    arrays[f"codebook/{name}"] = distinct.astype(np.float32)
sizes = {"v3": len(encode(model)), "v2": len(encode(model, version=2)), "biases": int(biases), "bits": bits or 8}
np.savez(out, meta=np.frombuffer(json.dumps(sizes).encode(), dtype=np.uint8), **arrays)
PY

# 2. with NNCodec's venv: DeepCABAC on the same levels
"$VENV/bin/python" - "$LEVELS" <<'PY'
import json, sys
import numpy as np
from nncodec.extensions import deepCABAC

data = np.load(sys.argv[1])
sizes = json.loads(bytes(data["meta"]).decode())
level_bytes = codebook_bytes = 0
for key in data.files:
    if not key.startswith("levels/"):
        continue
    levels = np.ascontiguousarray(data[key], dtype=np.int32)
    best = None
    for param_opt in (0, 1):  # NNCodec's default is 1 (context initialisation optimised per layer)
        encoder = deepCABAC.Encoder()
        encoder.initCtxModels(10 + 1, param_opt)  # cabac_unary_length_minus1 = 10, NNCodec's default
        # dq_flag 0 (the levels are given), scan order 0, general_profile_idc 1, no parent
        # node, no row skipping, HDSP off, no codebook offset: plain DeepCABAC on the levels
        encoder.encodeLayer(levels, 0, 0, 1, 0, 0, np.zeros(levels.shape[0], dtype=np.int32),
                            deepCABAC.HdspMode.AlwaysOff, np.zeros(2, dtype=np.int8), 0, 0)
        size = len(encoder.finish().tobytes())
        best = size if best is None else min(best, size)
    level_bytes += best
    codebook_bytes += 4 * data[key.replace("levels/", "codebook/")].size
total = level_bytes + codebook_bytes + 4 * sizes["biases"]
print(f"{sizes['bits']}-bit released SqueezeNet: NNCodec 2.1.3 DeepCABAC {total:,} B "
      f"(levels {level_bytes:,} + float32 used codebooks {codebook_bytes:,} + biases {4 * sizes['biases']:,}) | "
      f"sqz .sqz version 3 {sizes['v3']:,} B ({100 * (sizes['v3'] / total - 1):+.1f}%) | version 2 {sizes['v2']:,} B")
PY
