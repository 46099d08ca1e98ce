"""The .sqz file: a self-describing, checksummed container for a compressed model.

Layout (little-endian)::

    b"SQZ\\0" | u16 version | u16 reserved (0) | u32 header length
    header: UTF-8 JSON (architecture, one entry per tensor with its byte ranges)
    u32 CRC-32 of the header
    payload: the sections the header points at, each with its own CRC-32

A weight-shared tensor (at most 256 distinct non-zero values) is stored as
- ``codebook``: the used distinct values, float32, ascending;
- ``codes``: one symbol per non-zero weight, its codebook index;
- ``gaps``: one symbol per non-zero weight, the count of zeros skipped before it
  (Deep Compression's relative indices, without its 4-bit cap and filler entries).
Each symbol stream is stored with whichever coder is smaller for that stream: ``ans``
(an order-0 model, its counts as varints, then rANS words from the ``constriction``
library, within a fraction of a percent of the entropy) or ``packed`` (fixed-width bits).
Everything else (biases, tensors with more distinct values) is raw float32.

Reading never trusts the file: every range is checked against the payload, every section
against its CRC, every shape against the architecture the header names, before anything
is allocated from it. Any inconsistency is a :class:`CorruptFileError`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sqz import storage
from sqz.models import build_model

__all__ = ["CorruptFileError", "FORMAT_VERSION", "encode", "decode", "save", "load", "layer_sizes", "read_header"]

MAGIC = b"SQZ\0"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<4sHHI")
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_MAX_SHARED_VALUES = 256  # 8-bit codes at most, as in the paper


class CorruptFileError(ValueError):
    """The bytes are not a valid .sqz file (truncated, altered, or not .sqz at all)."""


# ---------------------------------------------------------------- symbol stream coders


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_varints(data: bytes, count: int) -> tuple[np.ndarray, int]:
    values = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):
        value, shift = 0, 0
        while True:
            if pos >= len(data) or shift > 56:
                raise CorruptFileError("symbol table runs past its section")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        values[i] = value
    return values, pos


def _ans_model(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)


def _encode_ans(symbols: np.ndarray, alphabet: int) -> bytes:
    import constriction

    counts = np.bincount(symbols, minlength=alphabet).astype(np.int64)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _ans_model(counts.astype(np.float64)))
    words = coder.get_compressed().astype("<u4").tobytes()
    return _varints(counts) + words


def _decode_ans(section: bytes, count: int, alphabet: int) -> np.ndarray:
    import constriction

    counts, used = _read_varints(section, alphabet)
    if counts.sum() != count or (count > 0 and counts.max() == 0):
        raise CorruptFileError("symbol counts do not add up to the stream length")
    words = section[used:]
    if len(words) % 4:
        raise CorruptFileError("entropy-coded stream is not a whole number of words")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(words, dtype="<u4").astype(np.uint32))
        symbols = np.asarray(coder.decode(_ans_model(counts.astype(np.float64)), count), dtype=np.int64)
    except Exception as exc:  # constriction raises on streams it cannot decode
        raise CorruptFileError(f"entropy-coded stream does not decode: {exc}") from None
    if np.bincount(symbols, minlength=alphabet)[:alphabet].tolist() != counts.tolist():
        raise CorruptFileError("decoded symbols do not match their counts")
    return symbols


def _bit_width(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(alphabet))) if alphabet > 1 else 0


def _encode_packed(symbols: np.ndarray, alphabet: int) -> bytes:
    width = _bit_width(alphabet)
    if width == 0:
        return b""
    bits = (symbols[:, None] >> np.arange(width - 1, -1, -1)) & 1  # (n, width), MSB first
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


def _decode_packed(section: bytes, count: int, alphabet: int) -> np.ndarray:
    width = _bit_width(alphabet)
    if width == 0:
        if section:
            raise CorruptFileError("packed stream of a one-symbol alphabet must be empty")
        return np.zeros(count, dtype=np.int64)
    if len(section) != (count * width + 7) // 8:
        raise CorruptFileError("packed stream has the wrong length")
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


@dataclass
class _Writer:
    payload: bytearray

    def add(self, data: bytes) -> list[int]:
        offset = len(self.payload)
        self.payload += data
        return [offset, len(data), zlib.crc32(data)]


def _smallest_stream(symbols: np.ndarray, alphabet: int) -> tuple[str, bytes]:
    candidates = [(name, enc(symbols, alphabet)) for name, (enc, _) in _CODERS.items()]
    return min(candidates, key=lambda item: len(item[1]))


def _arch_of(model: nn.Module, arch: dict[str, Any] | None) -> dict[str, Any]:
    spec = arch or getattr(model, "arch_spec", None)
    if spec is None:
        raise ValueError("encode: the model was not built by sqz.models.build_model; pass arch={'name': ..., 'kwargs': {...}}")
    return {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}


def encode(model: nn.Module, *, arch: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> bytes:
    """Serialise ``model``. Weights with at most 256 distinct non-zero values (pruned and
    weight-shared) are stored as codebook + codes + gaps; decode gives them back bit for bit."""
    writer = _Writer(bytearray())
    entries = []
    for name, tensor in model.state_dict().items():
        values = tensor.detach().cpu().to(torch.float32).contiguous().numpy().ravel()
        entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape)}
        positions = np.flatnonzero(values)
        distinct = np.unique(values[positions]) if tensor.dim() > 1 else None
        if distinct is not None and 0 < distinct.size <= _MAX_SHARED_VALUES:
            codes = np.searchsorted(distinct, values[positions])
            gaps = np.diff(positions, prepend=-1) - 1  # zeros skipped before each entry
            code_coder, code_bytes = _smallest_stream(codes, distinct.size)
            gap_alphabet = int(gaps.max()) + 1
            gap_coder, gap_bytes = _smallest_stream(gaps, gap_alphabet)
            entry.update(
                kind="shared",
                nonzero=int(positions.size),
                codebook=writer.add(distinct.astype("<f4").tobytes()),
                codes={"coder": code_coder, "alphabet": int(distinct.size), "section": writer.add(code_bytes)},
                gaps={"coder": gap_coder, "alphabet": gap_alphabet, "section": writer.add(gap_bytes)},
                entropy_bound_bytes=_entropy_bytes(codes) + _entropy_bytes(gaps),
            )
        else:
            entry.update(kind="raw", dtype="float32", data=writer.add(values.astype("<f4").tobytes()))
        entries.append(entry)
    header = {
        "format": "sqz",
        "version": FORMAT_VERSION,
        "arch": _arch_of(model, arch),
        "payload_bytes": len(writer.payload),
        "tensors": entries,
        "meta": meta or {},
    }
    header_bytes = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    return b"".join([
        _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes)),
        header_bytes,
        struct.pack("<I", zlib.crc32(header_bytes)),
        bytes(writer.payload),
    ])  # fmt: skip


# ---------------------------------------------------------------- decode


def read_header(data: bytes) -> tuple[dict[str, Any], memoryview]:
    """Validate the preamble and header; returns (header, payload view)."""
    if len(data) < _PREAMBLE.size + 4:
        raise CorruptFileError(f"file is {len(data)} bytes, too short for a .sqz preamble")
    magic, version, _reserved, header_len = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise CorruptFileError("not a .sqz file (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise CorruptFileError(f"unsupported .sqz version {version} (this reader knows {FORMAT_VERSION})")
    end = _PREAMBLE.size + header_len
    if header_len > _MAX_HEADER_BYTES or end + 4 > len(data):
        raise CorruptFileError(f"header length {header_len} runs past the end of the {len(data)}-byte file")
    header_bytes = bytes(data[_PREAMBLE.size : end])
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(header_bytes) != crc:
        raise CorruptFileError("header checksum mismatch")
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("tensors"), list) or not isinstance(header.get("arch"), dict):
        raise CorruptFileError("header lacks 'arch' or 'tensors'")
    payload = memoryview(data)[end + 4 :]
    if header.get("payload_bytes") != len(payload):
        raise CorruptFileError(f"payload is {len(payload)} bytes, header declares {header.get('payload_bytes')}")
    return header, payload


def _section(payload: memoryview, ref: Any, what: str) -> bytes:
    if not (isinstance(ref, list) and len(ref) == 3 and all(isinstance(v, int) and v >= 0 for v in ref)):
        raise CorruptFileError(f"{what}: malformed section reference")
    offset, length, crc = ref
    if offset + length > len(payload):
        raise CorruptFileError(f"{what}: section [{offset}, +{length}) runs past the {len(payload)}-byte payload")
    data = bytes(payload[offset : offset + length])
    if zlib.crc32(data) != crc:
        raise CorruptFileError(f"{what}: section checksum mismatch")
    return data


def _stream(payload: memoryview, spec: Any, count: int, limit: int, what: str) -> np.ndarray:
    if not isinstance(spec, dict) or spec.get("coder") not in _CODERS:
        raise CorruptFileError(f"{what}: unknown coder")
    alphabet = spec.get("alphabet")
    if not isinstance(alphabet, int) or not 1 <= alphabet <= limit:
        raise CorruptFileError(f"{what}: alphabet size {alphabet!r} out of range 1..{limit}")
    data = _section(payload, spec.get("section"), what)
    return _CODERS[spec["coder"]][1](data, count, alphabet)


def _decode_tensor(entry: dict[str, Any], expected: torch.Tensor, payload: memoryview) -> torch.Tensor:
    name = entry.get("name")
    numel = expected.numel()
    if entry.get("shape") != list(expected.shape):
        raise CorruptFileError(f"{name}: shape {entry.get('shape')} does not match the architecture's {list(expected.shape)}")
    kind = entry.get("kind")
    if kind == "raw":
        data = _section(payload, entry.get("data"), name)
        if len(data) != 4 * numel:
            raise CorruptFileError(f"{name}: raw data is {len(data)} bytes, expected {4 * numel}")
        return torch.from_numpy(np.frombuffer(data, dtype="<f4").copy()).view(expected.shape)
    if kind != "shared":
        raise CorruptFileError(f"{name}: unknown tensor kind {kind!r}")
    nonzero = entry.get("nonzero")
    if not isinstance(nonzero, int) or not 0 < nonzero <= numel:
        raise CorruptFileError(f"{name}: non-zero count {nonzero!r} out of range for {numel} weights")
    codebook_bytes = _section(payload, entry.get("codebook"), f"{name} codebook")
    if len(codebook_bytes) % 4 or not 1 <= len(codebook_bytes) // 4 <= _MAX_SHARED_VALUES:
        raise CorruptFileError(f"{name}: codebook of {len(codebook_bytes)} bytes is not 1..256 float32 values")
    codebook = np.frombuffer(codebook_bytes, dtype="<f4")
    codes = _stream(payload, entry.get("codes"), nonzero, codebook.size, f"{name} codes")
    if entry["codes"]["alphabet"] != codebook.size:
        raise CorruptFileError(f"{name}: code alphabet does not match the codebook")
    gaps = _stream(payload, entry.get("gaps"), nonzero, numel, f"{name} gaps")
    positions = np.cumsum(gaps + 1) - 1
    if positions[-1] >= numel:
        raise CorruptFileError(f"{name}: sparse indices run past the tensor's {numel} weights")
    values = np.zeros(numel, dtype=np.float32)
    values[positions] = codebook[codes]
    return torch.from_numpy(values).view(expected.shape)


def decode(data: bytes) -> nn.Module:
    """Rebuild the model stored in ``data`` (bytes of a .sqz file)."""
    header, payload = read_header(data)
    arch = header["arch"]
    try:
        model = build_model(str(arch.get("name")), **dict(arch.get("kwargs") or {}))
    except (ValueError, TypeError) as exc:
        raise CorruptFileError(f"header names an unusable architecture: {exc}") from None
    expected = model.state_dict()
    entries = {e.get("name"): e for e in header["tensors"] if isinstance(e, dict)}
    if set(entries) != set(expected):
        missing, extra = set(expected) - set(entries), set(entries) - set(expected)
        raise CorruptFileError(f"tensors do not match the architecture (missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]})")
    state = {name: _decode_tensor(entries[name], tensor, payload) for name, tensor in expected.items()}
    model.load_state_dict(state)
    model.eval()
    return model


# ---------------------------------------------------------------- size account and I/O


def layer_sizes(data: bytes) -> list[dict[str, Any]]:
    """Per-tensor byte account of a .sqz file (the ``compressed_layers`` table's rows)."""
    header, _ = read_header(data)
    rows = []
    for entry in header["tensors"]:
        shape = entry["shape"]
        weights = int(np.prod(shape)) if shape else 1
        if entry["kind"] == "shared":
            code_bytes = entry["codes"]["section"][1]
            index_bytes = entry["gaps"]["section"][1]
            overhead = entry["codebook"][1]
            rows.append(dict(
                layer=entry["name"], shape="x".join(map(str, shape)), weights=weights,
                nonzero=entry["nonzero"], bits=_bit_width(entry["codes"]["alphabet"]),
                code_bytes=code_bytes, index_bytes=index_bytes, overhead_bytes=overhead,
                entropy_bound_bytes=float(entry["entropy_bound_bytes"]),
            ))  # fmt: skip
        else:
            size = entry["data"][1]
            rows.append(dict(
                layer=entry["name"], shape="x".join(map(str, shape)), weights=weights,
                nonzero=weights, bits=32, code_bytes=size, index_bytes=0, overhead_bytes=0,
                entropy_bound_bytes=float(size),
            ))  # fmt: skip
    return rows


def save(model: nn.Module, url: str, **storage_options: Any) -> int:
    """Encode ``model`` and write it atomically to ``url``; returns the file's bytes."""
    data = encode(model)
    storage.write_bytes(url, data, **storage_options)
    return len(data)


def load(url: str, **storage_options: Any) -> nn.Module:
    return decode(storage.read_bytes(url, **storage_options))
