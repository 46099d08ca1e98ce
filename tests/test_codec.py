import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqz.compress import CorruptFileError, decode, encode, layer_sizes, load, prune_, quantize_, save
from sqz.compress.codec import read_header
from sqz.config import PruneConfig, QuantConfig
from sqz.models import build_model


def _compressed(bits=5, amount=0.8, num_classes=10, seed=0):
    torch.manual_seed(seed)
    model = build_model("squeezenet_small", num_classes=num_classes)
    prune_(model, PruneConfig(mode="std", amount=amount))
    quantize_(model, QuantConfig(bits=bits))
    return model.eval()


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_roundtrip_is_bit_exact_and_predicts_the_same(bits):
    model = _compressed(bits=bits)
    data = encode(model)
    decoded = decode(data)
    for (name, a), (_, b) in zip(model.state_dict().items(), decoded.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), decoded(x))


def test_compressed_file_is_much_smaller_than_float32():
    model = _compressed(bits=5, amount=1.0)
    dense_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    assert len(encode(model)) < dense_bytes / 6


def test_dense_unquantized_model_roundtrips_raw():
    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)
    decoded = decode(encode(model))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))


def test_layer_sizes_account_for_the_payload():
    data = encode(_compressed())
    rows = layer_sizes(data)
    shared = [r for r in rows if r["bits"] <= 8]
    assert shared and all(r["nonzero"] <= r["weights"] for r in rows)
    payload = sum(r["code_bytes"] + r["index_bytes"] + r["overhead_bytes"] for r in rows)
    assert payload < len(data) and len(data) - payload < 20_000  # the rest is the JSON header
    # the ANS coder sits within a small margin of the order-0 entropy bound
    for r in shared:
        if r["nonzero"] > 1000:
            assert r["code_bytes"] + r["index_bytes"] <= 1.05 * r["entropy_bound_bytes"] + 64


def test_save_load_through_storage(tmp_path):
    model = _compressed()
    url = str(tmp_path / "m.sqz")
    size = save(model, url)
    assert size == os.path.getsize(url)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), load(url).state_dict().values()))


def test_clear_errors_for_bad_files():
    data = encode(_compressed())
    with pytest.raises(CorruptFileError, match="too short"):
        decode(data[:5])
    with pytest.raises(CorruptFileError, match="bad magic"):
        decode(b"PK\x03\x04" + data[4:])
    with pytest.raises(CorruptFileError, match="payload is"):
        decode(data[:-1])
    with pytest.raises(CorruptFileError, match="version"):
        decode(data[:4] + struct.pack("<H", 99) + data[6:])
    flipped = bytearray(data)
    flipped[-10] ^= 0x40
    with pytest.raises(CorruptFileError, match="checksum"):
        decode(bytes(flipped))


def test_hostile_length_is_rejected_without_allocation():
    data = bytearray(encode(_compressed()))
    data[8:12] = struct.pack("<I", 2**31)  # header length far past the file
    with pytest.raises(CorruptFileError, match="runs past"):
        decode(bytes(data))


_SMALL = encode(_compressed(bits=2, amount=1.5, num_classes=2))


def _repack(header: dict, payload: bytes) -> bytes:
    """A file with valid checksums around a (possibly hostile) header and payload."""
    header = dict(header, payload_bytes=len(payload))
    raw = json.dumps(header).encode()
    packed = zlib.compress(raw)
    return struct.pack("<4sHHII", b"SQZ\0", 2, 0, len(packed), len(raw)) + packed + struct.pack("<I", zlib.crc32(packed)) + payload


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzzed_files_fail_cleanly(data):
    blob = bytearray(_SMALL)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    candidate = bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob)
    try:
        model = decode(candidate)
    except CorruptFileError:
        return
    # A mutation that leaves a valid file (e.g. same byte written back) must decode exactly.
    assert candidate == _SMALL or all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_hostile_files_with_valid_checksums_fail_cleanly(data):
    """Past the checksums: lying stream descriptions and garbage streams whose CRCs were
    recomputed must still end in CorruptFileError (or a valid model), never a crash."""
    header, payload = read_header(_SMALL)
    header = json.loads(json.dumps(header))
    payload = bytearray(payload)
    entry = data.draw(st.sampled_from(header["tensors"]))
    start = 0
    for e in header["tensors"]:
        if e is entry:
            break
        start += sum(s[4] for s in e["streams"])
    size = sum(s[4] for s in entry["streams"])
    what = data.draw(st.sampled_from(["stream field", "payload bytes", "kind", "shape"]))
    if what == "stream field":
        stream = data.draw(st.sampled_from(entry["streams"]))
        field = data.draw(st.integers(1, 4))
        stream[field] = data.draw(st.one_of(st.integers(0, 2**40), st.sampled_from(["ans", "packed", "zip", -1, None, 1.5])))
    elif what == "payload bytes" and size:
        for _ in range(data.draw(st.integers(1, 6))):
            payload[start + data.draw(st.integers(0, size - 1))] = data.draw(st.integers(0, 255))
    elif what == "kind":
        entry["kind"] = data.draw(st.sampled_from(["float", "shared", "raw", 7]))
    else:
        entry["shape"] = data.draw(st.lists(st.integers(0, 2**31), max_size=4))
    entry["crc"] = zlib.crc32(bytes(payload[start : start + size]))
    candidate = _repack(header, bytes(payload))
    try:
        model = decode(candidate)
    except CorruptFileError:
        return
    assert all(p.shape == q.shape for p, q in zip(model.parameters(), decode(_SMALL).parameters()))
