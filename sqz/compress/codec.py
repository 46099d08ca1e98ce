"""The .sqz file: a self-describing, checksummed container for a compressed model.

Layout (little-endian)::

    b"SQZ\\0" | u16 version | u16 reserved (0) | u32 header bytes | u32 header bytes unpacked
    header: zlib-deflated UTF-8 JSON (architecture, one entry per tensor, its streams)
    u32 CRC-32 of the (deflated) header
    payload: each tensor's streams back to back, in header order

The payload's checksums are in the header: version 3 has one CRC-32 of the whole payload
(``payload_crc``), version 2 one per tensor (``crc`` in its entry: 52 CRCs in decimal
JSON took ~410 deflated header bytes on the released SqueezeNet, one takes ~10).

Every tensor is a list of *streams*, each ``[role, coder, alphabet, count, bytes]`` in
the header. Two versions are read; ``encode`` writes 3 unless told ``version=2``.

Version 3 (issue 13's "format v2"): a weight-shared tensor (pruned and clustered: at
most 256 distinct non-zero values) is three streams, each coded by the adaptive binary
context coder of :mod:`sqz.compress.context_coder`:
- ``codebook``: the used values, ascending, as integer deltas of their float32 bit patterns;
- ``positions``: significance flags or gaps, whichever model (``positions_model`` in the
  entry) the encoder measured smaller for this layer;
- ``codes``: each non-zero weight's signed level (-r / +r: the r-th value below / above
  zero), under the context model ``codes_model`` the encoder measured smallest; models
  with bit 32 also store ``codes_predictor``, the taps of the linear prediction from the
  neighbouring weights whose place among the codebook values is the context.
A float tensor (a bias) is one ``floats`` stream of the context coder (sign and exponent
down an adaptive tree, mantissa nearly raw) where that is smaller than its byte planes
(below), which it is for every bias of the released SqueezeNet (14,980 -> 14,138 B).

Version 2 (issue 13's "v1"): a weight-shared tensor has
- ``cb0..cb3``: the used distinct values (float32, ascending), as four byte planes;
- ``codes``: one symbol per non-zero weight, its codebook index;
- ``gaps``: one symbol per non-zero weight, the count of zeros skipped before it
  (Deep Compression's relative indices, without its 4-bit cap and filler entries).

In both, any other tensor (biases, dense weights) is ``b0..b3``: its float32 values as
byte planes, and each of those streams (and each version-2 stream) is stored with
whichever coder is smaller for it:
- ``ans``: rANS (the ``constriction`` library, within a fraction of a percent of the
  zero-order entropy) under an order-0 model whose table travels *inside* the same rANS
  stream: each symbol's count is rounded to a third of an octave (2^(q/3)) and the
  differences of neighbouring q are coded with a fixed discretised Laplace. Histograms of
  codes, gaps and float exponents are smooth, so a 256-entry table costs tens of bytes
  instead of the ~400 of raw counts; the rounding costs about half a percent.
- ``packed``: fixed-width bits (the fallback for tiny or incompressible streams; a byte
  plane stored ``packed`` is its raw bytes).

Reading never trusts the file: sizes are checked against the payload and the
architecture before anything is allocated from them, every tensor against its CRC, every
decoded symbol against its alphabet. Any inconsistency is a :class:`CorruptFileError`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from sqz import storage
from sqz.compress import context_coder
from sqz.models import build_model

__all__ = ["CorruptFileError", "FORMAT_VERSION", "encode", "decode", "save", "load", "layer_sizes", "read_header"]

MAGIC = b"SQZ\0"
# 3: context-modelled codebooks, positions and codes (issue 13's "format v2");
# 2: order-0 rANS per stream (issue 13's "v1"), still read and still writable.
FORMAT_VERSION = 3
_READABLE_VERSIONS = (2, 3)
_PREAMBLE = struct.Struct("<4sHHII")
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_MAX_SHARED_VALUES = 256  # 8-bit codes at most, as in the paper
_MAX_ALPHABET = 1 << 24  # gaps can be long in very sparse layers; tables stay bounded

# The count table inside an ``ans`` stream: q = 0 for an absent symbol, else
# 1 + round(_STEPS * log2(count)); neighbouring differences ~ Laplace(0, _TABLE_SCALE).
_STEPS = 3
_Q_MAX = 1 + _STEPS * 40
_TABLE_SCALE = 1.0


class CorruptFileError(ValueError):
    """The bytes are not a valid .sqz file (truncated, altered, or not .sqz at all)."""


# ---------------------------------------------------------------- symbol stream coders


def _table_model():
    import constriction

    return constriction.stream.model.QuantizedLaplace(-_Q_MAX, _Q_MAX, 0.0, _TABLE_SCALE)


def _table_probabilities(q: np.ndarray) -> np.ndarray:
    return np.where(q > 0, np.exp2((q - 1) / _STEPS), 0.0)


def _encode_ans(symbols: np.ndarray, alphabet: int) -> bytes:
    import constriction

    counts = np.bincount(symbols, minlength=alphabet)
    q = np.zeros(alphabet, dtype=np.int64)
    present = counts > 0
    q[present] = 1 + np.rint(_STEPS * np.log2(counts[present])).astype(np.int64)
    model = constriction.stream.model.Categorical(_table_probabilities(q), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    # A stack coder: what is encoded last is decoded first, so the table goes in last.
    coder.encode_reverse(symbols.astype(np.int32), model)
    coder.encode_reverse(np.diff(q, prepend=0).astype(np.int32), _table_model())
    return coder.get_compressed().astype("<u4").tobytes()


def _decode_ans(section: bytes, count: int, alphabet: int) -> np.ndarray:
    import constriction

    if len(section) % 4:
        raise CorruptFileError("entropy-coded stream is not a whole number of words")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(section, dtype="<u4").astype(np.uint32))
        q = np.cumsum(np.asarray(coder.decode(_table_model(), alphabet), dtype=np.int64))
        if q.min() < 0 or q.max() > _Q_MAX or q.max() == 0:
            raise CorruptFileError("symbol table is out of range")
        model = constriction.stream.model.Categorical(_table_probabilities(q), perfect=False)
        symbols = np.asarray(coder.decode(model, count), dtype=np.int64)
    except CorruptFileError:
        raise
    except Exception as exc:  # constriction raises on streams it cannot decode
        raise CorruptFileError(f"entropy-coded stream does not decode: {exc}") from None
    if symbols.size != count or (count and (symbols.min() < 0 or symbols.max() >= alphabet)):
        raise CorruptFileError("decoded symbols fall outside their alphabet")
    return symbols


def _bit_width(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(alphabet))) if alphabet > 1 else 0


def _encode_packed(symbols: np.ndarray, alphabet: int) -> bytes:
    width = _bit_width(alphabet)
    if width == 0:
        return b""
    if width == 8:
        return symbols.astype(np.uint8).tobytes()
    bits = (symbols[:, None] >> np.arange(width - 1, -1, -1)) & 1  # (n, width), MSB first
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


def _decode_packed(section: bytes, count: int, alphabet: int) -> np.ndarray:
    width = _bit_width(alphabet)
    if len(section) != (count * width + 7) // 8:
        raise CorruptFileError("packed stream has the wrong length")
    if width == 0:
        return np.zeros(count, dtype=np.int64)
    if width == 8:
        symbols = np.frombuffer(section, dtype=np.uint8).astype(np.int64)
    else:
        bits = np.unpackbits(np.frombuffer(section, dtype=np.uint8))[: count * width].reshape(count, width)
        symbols = bits.astype(np.int64) @ (1 << np.arange(width - 1, -1, -1))
    if count and symbols.max() >= alphabet:
        raise CorruptFileError("packed symbol outside its alphabet")
    return symbols


_CODERS = {"ans": (_encode_ans, _decode_ans), "packed": (_encode_packed, _decode_packed)}


def _entropy_bytes(symbols: np.ndarray) -> float:
    """Zero-order entropy of a stream in bytes: the bound an order-0 coder can approach."""
    if symbols.size == 0:
        return 0.0
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * symbols.size / 8)


# ---------------------------------------------------------------- encode


def _byte_planes(values: np.ndarray) -> list[np.ndarray]:
    """float32 -> four byte streams, most significant first: the sign/exponent plane of
    real weights takes few values, so it codes to a fraction of its raw size."""
    raw = values.astype("<f4").view(np.uint8).reshape(-1, 4)
    return [raw[:, i].astype(np.int64) for i in (3, 2, 1, 0)]


class _Encoder:
    def __init__(self, tensor_crcs: bool = True) -> None:
        self.payload = bytearray()
        self.entries: list[dict[str, Any]] = []
        self.tensor_crcs = tensor_crcs  # version 2: a CRC-32 per tensor; 3: one for the payload

    def add(self, name: str, shape: list[int], kind: str, streams: list[tuple[str, np.ndarray, int]], **extra: Any) -> None:
        specs, blobs = [], []
        for role, symbols, alphabet in streams:
            candidates = [(coder, enc(symbols, alphabet)) for coder, (enc, _) in _CODERS.items()]
            coder, blob = min(candidates, key=lambda item: len(item[1]))
            specs.append([role, coder, int(alphabet), int(symbols.size), len(blob)])
            blobs.append(blob)
        self._append(name, shape, kind, specs, blobs, extra)

    def add_blobs(self, name: str, shape: list[int], kind: str, streams: list[tuple[str, str, int, int, bytes]], **extra: Any) -> None:
        """Streams already coded: (role, coder, alphabet, count, bytes)."""
        specs = [[role, coder, int(alphabet), int(count), len(blob)] for role, coder, alphabet, count, blob in streams]
        self._append(name, shape, kind, specs, [s[4] for s in streams], extra)

    def _append(self, name: str, shape: list[int], kind: str, specs: list[list[Any]], blobs: list[bytes], extra: dict[str, Any]) -> None:
        data = b"".join(blobs)
        self.payload += data
        crc = {"crc": zlib.crc32(data)} if self.tensor_crcs else {}
        self.entries.append({"name": name, "shape": shape, "kind": kind, "streams": specs, **crc, **extra})


def _arch_of(model: nn.Module, arch: dict[str, Any] | None) -> dict[str, Any]:
    spec = arch or getattr(model, "arch_spec", None)
    if spec is None:
        raise ValueError("encode: the model was not built by sqz.models.build_model; pass arch={'name': ..., 'kwargs': {...}}")
    return {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}


def _shared_streams_v2(encoder: _Encoder, name: str, shape: list[int], distinct: np.ndarray, codes: np.ndarray, positions: np.ndarray, bound: float) -> None:
    gaps = np.diff(positions, prepend=-1) - 1  # zeros skipped before each entry
    planes = [(f"cb{i}", plane, 256) for i, plane in enumerate(_byte_planes(distinct))]
    encoder.add(name, shape, "shared", planes + [("codes", codes, distinct.size), ("gaps", gaps, int(gaps.max()) + 1)],
                entropy_bound_bytes=bound)  # fmt: skip


def _shared_streams_v3(encoder: _Encoder, name: str, shape: list[int], distinct: np.ndarray, codes: np.ndarray, positions: np.ndarray, bound: float) -> None:
    """Codebook, positions and codes under adaptive contexts; the smallest position model
    and code model for this layer are measured here and named in the header."""
    numel = int(np.prod(shape))
    rows, kernel = _layout(shape)
    flags = np.zeros(numel, dtype=np.int8)
    flags[positions] = 1
    negatives = int(np.searchsorted(distinct, 0))
    levels = np.zeros(numel, dtype=np.int32)
    levels[positions] = context_coder.signed_levels(codes, negatives)
    codebook = context_coder.encode_codebook(distinct)
    position_model, position_blob = min(
        ((m, context_coder.encode_positions(flags, rows, kernel, i)) for i, m in enumerate(context_coder.POSITION_MODELS)),
        key=lambda item: len(item[1]),
    )  # fmt: skip
    predictor = context_coder.fit_predictor(levels, flags, rows, kernel, negatives, distinct)
    code_model, code_blob = min(
        ((m, context_coder.encode_codes(levels, flags, rows, kernel, negatives, distinct.size - negatives, m, distinct, predictor))
         for m in _CODE_MODELS_TRIED),
        key=lambda item: len(item[1]),
    )  # fmt: skip
    extra = {"codes_predictor": predictor} if code_model & _PREDICTOR_BIT else {}
    encoder.add_blobs(
        name, shape, "shared",
        [("codebook", "context", distinct.size, distinct.size, codebook),
         ("positions", "context", numel, positions.size, position_blob),
         ("codes", "context", distinct.size, positions.size, code_blob)],
        positions_model=position_model, codes_model=code_model, entropy_bound_bytes=bound, **extra,
    )  # fmt: skip


# Code models tried per layer (bit 1 = sign-split magnitudes, 2 = previous level in the
# kernel, 4 = the kernel's non-zero count / the row's scale, 8 = those contexts on the
# top levels of the magnitude tree only, 16 = the left and upper neighbours in the
# kernel instead of the previous level, 32 = the place of a linear prediction from the
# neighbours among the codebook values instead of either). These five were the only
# winners on the released model's 26 layers, at 8 bits and re-clustered at 6, among
# those measured (33, 37, 45 never won): 1 on most 1x1 layers, 27 or 31 on most 3x3
# ones, 41 on conv1, the classifier and one or two 3x3 layers. Without the sign split
# the magnitudes of both signs share one tree, which measured worse on every layer.
_PREDICTOR_BIT = 32
_CODE_MODELS_TRIED = (1, 13, 27, 31, 41)


def _layout(shape: list[int]) -> tuple[int, int]:
    """(output channels, weights per kernel): rows are coded in order, kernels in a row."""
    rows = int(shape[0]) if shape else 1
    kernel = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return rows, kernel


def encode(model: nn.Module, *, arch: dict[str, Any] | None = None, meta: dict[str, Any] | None = None, version: int = FORMAT_VERSION) -> bytes:
    """Serialise ``model``. Weights with at most 256 distinct non-zero values (pruned and
    weight-shared) are stored as codebook + codes + positions; decode gives every tensor
    back bit for bit. ``version=2`` writes the older order-0 format (kept for comparison
    and for the tests of its reader)."""
    if version not in _READABLE_VERSIONS:
        raise ValueError(f"encode: version must be one of {_READABLE_VERSIONS}, got {version!r}")
    encoder = _Encoder(tensor_crcs=version == 2)
    shared_streams = _shared_streams_v3 if version == 3 else _shared_streams_v2
    for name, tensor in model.state_dict().items():
        values = tensor.detach().cpu().to(torch.float32).contiguous().numpy().ravel()
        shape = list(tensor.shape)
        positions = np.flatnonzero(values)
        distinct = np.unique(values[positions]) if tensor.dim() > 1 else None
        # -0.0 and non-finite values stay raw floats: -0.0 is not "non-zero", and the
        # codebook coder needs finite values whose bit patterns sort like the numbers.
        exotic = distinct is not None and (np.signbit(values[values == 0]).any() or not np.isfinite(distinct).all())
        if distinct is not None and 0 < distinct.size <= _MAX_SHARED_VALUES and not exotic:
            codes = np.searchsorted(distinct, values[positions])
            gaps = np.diff(positions, prepend=-1) - 1
            bound = round(_entropy_bytes(codes) + _entropy_bytes(gaps), 1)
            shared_streams(encoder, name, shape, distinct, codes, positions, bound)
        else:
            planes = _Encoder()
            planes.add(name, shape, "float", [(f"b{i}", plane, 256) for i, plane in enumerate(_byte_planes(values))])
            context = context_coder.encode_floats(values) if version == 3 else None
            if context is not None and len(context) < len(planes.payload):
                encoder.add_blobs(name, shape, "float", [("floats", "context", 256, values.size, context)])
            else:
                encoder.add(name, shape, "float", [(f"b{i}", plane, 256) for i, plane in enumerate(_byte_planes(values))])
    header = {
        "format": "sqz",
        "version": version,
        "arch": _arch_of(model, arch),
        "payload_bytes": len(encoder.payload),
        **({"payload_crc": zlib.crc32(encoder.payload)} if version == 3 else {}),
        "tensors": encoder.entries,
        "meta": meta or {},
    }
    header_json = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    header_bytes = zlib.compress(header_json, 9)
    return b"".join([
        _PREAMBLE.pack(MAGIC, version, 0, len(header_bytes), len(header_json)),
        header_bytes,
        struct.pack("<I", zlib.crc32(header_bytes)),
        bytes(encoder.payload),
    ])  # fmt: skip


# ---------------------------------------------------------------- decode


def read_header(data: bytes) -> tuple[dict[str, Any], memoryview]:
    """Validate the preamble and header; returns (header, payload view)."""
    if len(data) < _PREAMBLE.size + 4:
        raise CorruptFileError(f"file is {len(data)} bytes, too short for a .sqz preamble")
    magic, version, _reserved, header_len, json_len = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError("not a .sqz file (bad magic bytes)")
    if version not in _READABLE_VERSIONS:
        raise CorruptFileError(f"unsupported .sqz version {version} (this reader knows {', '.join(map(str, _READABLE_VERSIONS))})")
    end = _PREAMBLE.size + header_len
    if header_len > _MAX_HEADER_BYTES or end + 4 > len(data):
        raise CorruptFileError(f"header length {header_len} runs past the end of the {len(data)}-byte file")
    if json_len > _MAX_HEADER_BYTES:
        raise CorruptFileError(f"header declares {json_len} unpacked bytes, over the {_MAX_HEADER_BYTES} limit")
    header_bytes = bytes(data[_PREAMBLE.size : end])
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(header_bytes) != crc:
        raise CorruptFileError("header checksum mismatch")
    try:
        # max_length bounds the output, so a deflate bomb cannot allocate past the limit.
        inflater = zlib.decompressobj()
        header_json = inflater.decompress(header_bytes, json_len + 1)
        if len(header_json) != json_len or not inflater.eof:
            raise CorruptFileError(f"header unpacks to a different size than the declared {json_len} bytes")
        header = json.loads(header_json)
    except zlib.error as exc:
        raise CorruptFileError(f"header does not inflate: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) or not isinstance(header.get("arch"), dict):
        raise CorruptFileError("header lacks 'arch' or 'tensors'")
    payload = memoryview(data)[end + 4 :]
    if header.get("version") != version:
        raise CorruptFileError(f"header says version {header.get('version')!r}, the preamble {version}")
    if header.get("payload_bytes") != len(payload):
        raise CorruptFileError(f"payload is {len(payload)} bytes, header declares {header.get('payload_bytes')}")
    return header, payload


_ROLES = {
    2: {"float": ["b0", "b1", "b2", "b3"], "shared": ["cb0", "cb1", "cb2", "cb3", "codes", "gaps"]},
    3: {"float": ["b0", "b1", "b2", "b3"], "shared": ["codebook", "positions", "codes"]},
}
# Version 3 may also store a float tensor as one context-coded stream (``encode_floats``),
# where that is smaller than its byte planes.
_CONTEXT_FLOATS = ["floats"]


def _streams_of(entry: dict[str, Any], name: str, version: int) -> list[list[Any]]:
    kind = entry.get("kind")
    roles = _ROLES[version]
    if kind not in roles:
        raise CorruptFileError(f"{name}: unknown tensor kind {kind!r}")
    streams = entry.get("streams")
    found = [s[0] if isinstance(s, list) and s else None for s in streams] if isinstance(streams, list) else None
    context_floats = version == 3 and kind == "float" and found == _CONTEXT_FLOATS
    if found != roles[kind] and not context_floats:
        raise CorruptFileError(f"{name}: streams are not {roles[kind]}")
    if not all(len(s) == 5 for s in streams):
        raise CorruptFileError(f"{name}: a stream description is not [role, coder, alphabet, count, bytes]")
    coders = ("context",) if (version == 3 and kind == "shared") or context_floats else tuple(_CODERS)
    for role, coder, alphabet, count, size in streams:
        if coder not in coders or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (alphabet, count, size)):
            raise CorruptFileError(f"{name} {role}: malformed stream description")
        if not 1 <= alphabet <= _MAX_ALPHABET:
            raise CorruptFileError(f"{name} {role}: alphabet size {alphabet} out of range 1..{_MAX_ALPHABET}")
    return streams


def _decode_shared_v3(entry: dict[str, Any], expected: torch.Tensor, data: bytes, streams: list[list[Any]]) -> torch.Tensor:
    name = entry.get("name")
    shape = list(expected.shape)
    numel = expected.numel()
    (_, _, size, count, cb_bytes), (_, _, pos_alphabet, nonzero, pos_bytes), (_, _, code_alphabet, code_count, _) = streams
    if not (1 <= size <= _MAX_SHARED_VALUES and count == size == code_alphabet):
        raise CorruptFileError(f"{name}: codebook of {count} values does not match its code alphabet {code_alphabet}")
    if not (pos_alphabet == numel and 0 < nonzero == code_count <= numel):
        raise CorruptFileError(f"{name}: {nonzero} positions and {code_count} codes for {numel} weights")
    position_model, code_model = entry.get("positions_model"), entry.get("codes_model")
    if position_model not in context_coder.POSITION_MODELS:
        raise CorruptFileError(f"{name}: unknown positions model {position_model!r}")
    if not isinstance(code_model, int) or isinstance(code_model, bool) or not 0 <= code_model < context_coder.CODE_MODELS:
        raise CorruptFileError(f"{name}: unknown codes model {code_model!r}")
    predictor = entry.get("codes_predictor") if code_model & _PREDICTOR_BIT else None
    if code_model & _PREDICTOR_BIT and not (
        isinstance(predictor, list) and len(predictor) == context_coder.PREDICTOR_TAPS
        and all(isinstance(c, int) and not isinstance(c, bool) and abs(c) <= context_coder.COEFFICIENT_LIMIT for c in predictor)
    ):  # fmt: skip
        raise CorruptFileError(f"{name}: codes predictor {predictor!r} is not {context_coder.PREDICTOR_TAPS} integers within ±{context_coder.COEFFICIENT_LIMIT}")
    codebook = context_coder.decode_codebook(data[:cb_bytes], size)
    if codebook is None or not np.isfinite(codebook).all() or (codebook == 0).any() or (np.diff(codebook) <= 0).any():
        raise CorruptFileError(f"{name}: codebook stream does not decode to distinct ascending non-zero values")
    rows, kernel = _layout(shape)
    flags = context_coder.decode_positions(data[cb_bytes : cb_bytes + pos_bytes], rows, numel // rows, kernel, nonzero,
                                           context_coder.POSITION_MODELS.index(position_model))  # fmt: skip
    if flags is None:
        raise CorruptFileError(f"{name}: positions stream does not decode")
    negatives = int(np.searchsorted(codebook, 0))
    levels = context_coder.decode_codes(data[cb_bytes + pos_bytes :], flags, rows, kernel, negatives, size - negatives, code_model,
                                        codebook, predictor)  # fmt: skip
    if levels is None:
        raise CorruptFileError(f"{name}: codes stream does not decode")
    index = np.where(levels < 0, levels + negatives, levels + negatives - 1)
    values = np.where(flags != 0, codebook[np.clip(index, 0, size - 1)], np.float32(0)).astype(np.float32)
    return torch.from_numpy(values).view(expected.shape)


def _decode_tensor(entry: dict[str, Any], expected: torch.Tensor, data: bytes, version: int) -> torch.Tensor:
    name = entry.get("name")
    numel = expected.numel()
    if entry.get("shape") != list(expected.shape):
        raise CorruptFileError(f"{name}: shape {entry.get('shape')} does not match the architecture's {list(expected.shape)}")
    streams = _streams_of(entry, name, version)
    if version == 3 and entry["kind"] == "shared":
        return _decode_shared_v3(entry, expected, data, streams)
    if streams[0][0] == "floats":
        if streams[0][3] != numel:
            raise CorruptFileError(f"{name}: {streams[0][3]} values stored for {numel} weights")
        values = context_coder.decode_floats(data, numel)
        if values is None:
            raise CorruptFileError(f"{name}: floats stream does not decode")
        return torch.from_numpy(values).view(expected.shape)
    decoded, offset = {}, 0
    for role, coder, alphabet, count, size in streams:
        if role.startswith(("b", "cb")) and alphabet != 256:
            raise CorruptFileError(f"{name} {role}: a byte plane has alphabet {alphabet}, not 256")
        decoded[role] = _CODERS[coder][1](data[offset : offset + size], count, alphabet)
        offset += size

    def floats(prefix: str) -> np.ndarray:
        planes = [decoded[f"{prefix}{i}"] for i in range(4)]
        if len({p.size for p in planes}) != 1:
            raise CorruptFileError(f"{name}: byte planes of different lengths")
        return np.stack(planes[::-1], axis=1).astype(np.uint8).reshape(-1).view("<f4")

    if entry["kind"] == "float":
        values = floats("b")
        if values.size != numel:
            raise CorruptFileError(f"{name}: {values.size} values stored for {numel} weights")
        return torch.from_numpy(values.astype(np.float32)).view(expected.shape)
    codebook, codes, gaps = floats("cb"), decoded["codes"], decoded["gaps"]
    if not 1 <= codebook.size <= _MAX_SHARED_VALUES or streams[4][2] != codebook.size:
        raise CorruptFileError(f"{name}: codebook of {codebook.size} values does not match its code alphabet")
    if not 0 < codes.size == gaps.size <= numel:
        raise CorruptFileError(f"{name}: {codes.size} codes and {gaps.size} gaps for {numel} weights")
    positions = np.cumsum(gaps + 1) - 1
    if positions[-1] >= numel:
        raise CorruptFileError(f"{name}: sparse indices run past the tensor's {numel} weights")
    values = np.zeros(numel, dtype=np.float32)
    values[positions] = codebook[codes]
    return torch.from_numpy(values).view(expected.shape)


def _check_stream_sizes(header: dict[str, Any], expected: dict[str, torch.Tensor], payload_bytes: int, version: int) -> list[tuple[int, int]]:
    """Before decoding anything: each stream's declared symbol count must fit its tensor,
    and the sections must tile the payload exactly. Returns each tensor's byte range."""
    ranges, offset = [], 0
    for entry in header["tensors"]:
        name = entry.get("name")
        streams = _streams_of(entry, name, version)
        numel = expected[name].numel()
        for role, _coder, _alphabet, count, _size in streams:
            limit = _MAX_SHARED_VALUES if role.startswith("cb") or role == "codebook" else numel
            if count > limit:
                raise CorruptFileError(f"{name} {role}: {count} symbols declared for a {limit}-entry tensor")
        size = sum(s[4] for s in streams)
        ranges.append((offset, size))
        offset += size
    if offset != payload_bytes:
        raise CorruptFileError(f"streams add up to {offset} bytes, the payload has {payload_bytes}")
    return ranges


def decode(data: bytes) -> nn.Module:
    """Rebuild the model stored in ``data`` (bytes of a .sqz file)."""
    header, payload = read_header(data)
    arch = header["arch"]
    try:
        model = build_model(str(arch.get("name")), **dict(arch.get("kwargs") or {}))
    except (ValueError, TypeError) as exc:
        raise CorruptFileError(f"header names an unusable architecture: {exc}") from None
    expected = model.state_dict()
    if not all(isinstance(e, dict) for e in header["tensors"]):
        raise CorruptFileError("tensor entries must be objects")
    names = [e.get("name") for e in header["tensors"]]
    if sorted(map(str, names)) != sorted(expected) or len(set(names)) != len(names):
        missing, extra = set(expected) - set(names), set(names) - set(expected)
        raise CorruptFileError(f"tensors do not match the architecture (missing {sorted(missing)[:3]}, extra {sorted(map(str, extra))[:3]})")
    version = header["version"]
    ranges = _check_stream_sizes(header, expected, len(payload), version)
    if version == 3 and zlib.crc32(payload) != header.get("payload_crc"):
        raise CorruptFileError("payload checksum mismatch")
    state = {}
    for entry, (offset, size) in zip(header["tensors"], ranges):
        section = bytes(payload[offset : offset + size])
        if version == 2 and zlib.crc32(section) != entry.get("crc"):
            raise CorruptFileError(f"{entry['name']}: checksum mismatch")
        # assign=True below keeps the decoded dtype: cast to the model's (an int buffer stays int)
        state[entry["name"]] = _decode_tensor(entry, expected[entry["name"]], section, version).to(expected[entry["name"]].dtype)
    model.load_state_dict(state, assign=True)  # the decoded arrays become the tensors: no copy
    model.eval()
    return model


# ---------------------------------------------------------------- size account and I/O


def layer_sizes(data: bytes) -> list[dict[str, Any]]:
    """Per-tensor byte account of a .sqz file (the ``compressed_layers`` table's rows):
    code and index (position) bytes, overhead (the codebook), the zero-order entropy
    bound of the codes and gaps, and which model coded each stream (``codes_model``,
    ``positions_model``, ``codebook_model``). The rows add up to the payload; the rest of
    the file is the deflated header (``header_bytes``)."""
    header, _ = read_header(data)
    version = header["version"]
    rows = []
    for entry in header["tensors"]:
        shape = entry["shape"]
        weights = int(np.prod(shape)) if shape else 1
        sizes = {s[0]: s[4] for s in entry["streams"]}
        coders = {s[0]: s[1] for s in entry["streams"]}
        common = dict(layer=entry["name"], shape="x".join(map(str, shape)), weights=weights, format_version=version)
        if entry["kind"] == "shared" and version == 3:
            codebook, positions, codes = entry["streams"]
            rows.append(dict(
                common, nonzero=codes[3], bits=_bit_width(codes[2]),
                code_bytes=codes[4], index_bytes=positions[4], overhead_bytes=codebook[4],
                entropy_bound_bytes=float(entry["entropy_bound_bytes"]),
                codes_model=f"context {entry['codes_model']}", positions_model=f"context {entry['positions_model']}",
                codebook_model="context deltas",
            ))  # fmt: skip
        elif entry["kind"] == "shared":
            alphabet = entry["streams"][4][2]
            rows.append(dict(
                common, nonzero=entry["streams"][4][3], bits=_bit_width(alphabet),
                code_bytes=sizes["codes"], index_bytes=sizes["gaps"],
                overhead_bytes=sum(sizes[f"cb{i}"] for i in range(4)),
                entropy_bound_bytes=float(entry["entropy_bound_bytes"]),
                codes_model=f"order-0 {coders['codes']}", positions_model=f"order-0 {coders['gaps']} gaps",
                codebook_model="byte planes",
            ))  # fmt: skip
        else:
            size = sum(sizes.values())
            rows.append(dict(
                common, nonzero=weights, bits=32, code_bytes=size, index_bytes=0, overhead_bytes=0,
                entropy_bound_bytes=float(4 * weights),
                codes_model="float32 context (sign+exponent tree, mantissa)" if "floats" in coders
                else "float32 byte planes, order-0 " + "/".join(coders[f"b{i}"] for i in range(4)),
                positions_model="", codebook_model="",
            ))  # fmt: skip
    return rows


def header_bytes(data: bytes) -> int:
    """Bytes of the file outside the tensors' streams (preamble, deflated header, CRC)."""
    header, payload = read_header(data)
    return len(data) - len(payload)


def save(model: nn.Module, url: str, **storage_options: Any) -> int:
    """Encode ``model`` and write it atomically to ``url``; returns the file's bytes."""
    data = encode(model)
    storage.write_bytes(url, data, **storage_options)
    return len(data)


def load(url: str, **storage_options: Any) -> nn.Module:
    return decode(storage.read_bytes(url, **storage_options))
