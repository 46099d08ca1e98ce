"""The per-layer byte account of a .sqz file (`sqz inspect`): where every byte goes."""

from __future__ import annotations

from typing import Any

__all__ = ["byte_account"]


def byte_account(url: str) -> dict[str, Any]:
    """Per layer: shape, weights, non-zeros, bits, code / index / other bytes, the
    entropy bound and the coding models; plus the totals, the format version, the
    header's and the file's bytes."""
    from sqz import storage
    from sqz.compress.codec import header_bytes, layer_sizes

    data = storage.read_bytes(url)
    rows = layer_sizes(data)
    totals = {key: sum(r[key] for r in rows)
              for key in ("weights", "nonzero", "code_bytes", "index_bytes", "overhead_bytes", "entropy_bound_bytes")}  # fmt: skip
    return {"layers": rows, "totals": totals, "format_version": rows[0]["format_version"] if rows else None,
            "header_bytes": header_bytes(data), "file_bytes": len(data)}  # fmt: skip
