"""Compile sqz's numba kernels into their on-disk cache: `python -m sqz.compress.warm`
(`make venv` runs it once after installing).

The exact k-means dynamic program and the context coder are numba functions with
``cache=True``: compiled once, they are loaded from ``__pycache__`` beside their sources
by every later process (Ray workers included). Compiled cold they cost ~40-60 s of one
core here (measured under load), paid by whichever process first quantizes and encodes:
in a fresh clone, each trial of the demo's first wave at once. This compiles them with
the same argument types a trial uses (a pruned squeezenet_small quantized at 6 bits,
encoded and decoded)."""

from __future__ import annotations

import time

import numpy as np
import torch

from sqz.compress import exact_kmeans
from sqz.compress.codec import decode, encode
from sqz.compress.kmeans import quantize_
from sqz.compress.prune import prune_
from sqz.config import PruneConfig, QuantConfig
from sqz.models import build_model


def main() -> None:
    start = time.perf_counter()
    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)
    prune_(model, PruneConfig(mode="std", amount=0.9))
    quantize_(model, QuantConfig(bits=6, finetune_epochs=0, distill_steps=0))
    decode(encode(model))
    # The exact DP that k-means falls back on when no Lagrange penalty gives exactly k
    # runs (ties): rare, so the model above may not reach it, but a trial that does would
    # compile it (1.6 s here) in every process that meets it first.
    exact_kmeans._optimal_bounds(*exact_kmeans._prefix_sums(np.array([0.0, 1.0, 2.0, 5.0]), np.ones(4)), 2)
    print(f"sqz: numba kernels compiled into their cache in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
