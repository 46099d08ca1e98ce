import hashlib
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqz.compress import CorruptFileError, context_coder, decode, encode, layer_sizes, load, prune_, quantize_, save
from sqz.compress.codec import FORMAT_VERSION, read_header
from sqz.config import PruneConfig, QuantConfig
from sqz.models import build_model, list_models

V1_FIXTURE = os.path.join(os.path.dirname(__file__), "data", "v1_squeezenet_small.sqz")
RELEASED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models",
                        "squeezenet-deep-compression", "compressed_SqueezeNet.net")  # fmt: skip


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
    version = header["version"] if header.get("version") in (2, 3) else FORMAT_VERSION
    return struct.pack("<4sHHII", b"SQZ\0", version, 0, len(packed), len(raw)) + packed + struct.pack("<I", zlib.crc32(packed)) + payload


@pytest.mark.slow
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


with open(V1_FIXTURE, "rb") as _f:
    _V1 = _f.read()


_SHAPES = [p.shape for p in decode(_SMALL).parameters()]


# Each example decodes a whole model (~0.1 s): 400 keep the test near 40 s.
@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.sampled_from(["v3", "v2"]))
def test_hostile_files_with_valid_checksums_fail_cleanly(data, which):
    """Past the checksums: lying stream descriptions and garbage streams whose CRCs were
    recomputed must still end in CorruptFileError (or a valid model), never a crash."""
    original = _SMALL if which == "v3" else _V1
    header, payload = read_header(original)
    header = json.loads(json.dumps(header))
    payload = bytearray(payload)
    entry = data.draw(st.sampled_from(header["tensors"]))
    start = 0
    for e in header["tensors"]:
        if e is entry:
            break
        start += sum(s[4] for s in e["streams"])
    size = sum(s[4] for s in entry["streams"])
    what = data.draw(st.sampled_from(["stream field", "payload bytes", "kind", "shape", "model"]))
    if what == "stream field":
        stream = data.draw(st.sampled_from(entry["streams"]))
        field = data.draw(st.integers(1, 4))
        stream[field] = data.draw(st.one_of(st.integers(0, 2**40), st.sampled_from(["ans", "packed", "context", "zip", -1, None, 1.5])))
    elif what == "model" and "codes_model" in entry:
        key = data.draw(st.sampled_from(["codes_model", "positions_model"]))
        entry[key] = data.draw(st.one_of(st.integers(-2, 9), st.sampled_from(["gaps", "sig", "sig+col", "zip", None, True])))
    elif what == "payload bytes" and size:
        for _ in range(data.draw(st.integers(1, 6))):
            payload[start + data.draw(st.integers(0, size - 1))] = data.draw(st.integers(0, 255))
    elif what == "kind":
        entry["kind"] = data.draw(st.sampled_from(["float", "shared", "raw", 7]))
    else:
        entry["shape"] = data.draw(st.lists(st.integers(0, 2**31), max_size=4))
    if which == "v3":
        header["payload_crc"] = zlib.crc32(bytes(payload))
    else:
        entry["crc"] = zlib.crc32(bytes(payload[start : start + size]))
    candidate = _repack(header, bytes(payload))
    try:
        model = decode(candidate)
    except CorruptFileError:
        return
    assert [p.shape for p in model.parameters()] == _SHAPES


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_v1_file_written_before_v2_still_decodes_bit_exact():
    """tests/data/v1_squeezenet_small.sqz was written by the order-0 codec (header version
    2) before the context coder existed; the digest is of the model it was written from."""
    assert read_header(_V1)[0]["version"] == 2
    model = decode(_V1)
    assert _digest(model.state_dict()) == "b99e4a037e5a939cea8b891d0cd7c79fdb5b0bec9e31d523a2d7562c66a902d5"
    # and re-encoding it gives both formats back, each decoding to the same weights
    for version in (2, 3):
        data = encode(model, version=version)
        assert read_header(data)[0]["version"] == version
        assert _digest(decode(data).state_dict()) == _digest(model.state_dict())
    assert read_header(encode(model))[0]["version"] == FORMAT_VERSION == 3
    with pytest.raises(ValueError, match="version"):
        encode(model, version=1)


def _weight_shapes() -> list[tuple[int, ...]]:
    shapes = set()
    for name in list_models():
        for tensor in build_model(name).state_dict().values():
            if tensor.dim() > 1:
                shapes.add(tuple(tensor.shape))
    return sorted(shapes)


def _random_layer(rng, shape, bits, density):
    numel = int(np.prod(shape))
    codebook = np.unique(rng.standard_normal(1 << bits).astype(np.float32))
    codebook = codebook[codebook != 0]
    weights = np.zeros(numel, dtype=np.float32)
    mask = rng.random(numel) < density
    weights[mask] = codebook[rng.integers(0, codebook.size, int(mask.sum()))]
    return weights


def _roundtrip_layer(weights, shape):
    """The v3 streams of one layer, straight through the context coder."""
    rows = shape[0]
    kernel = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    positions = np.flatnonzero(weights)
    distinct = np.unique(weights[positions])
    flags = np.zeros(weights.size, dtype=np.int8)
    flags[positions] = 1
    negatives = int(np.searchsorted(distinct, 0))
    levels = np.zeros(weights.size, dtype=np.int32)
    levels[positions] = context_coder.signed_levels(np.searchsorted(distinct, weights[positions]), negatives)
    codebook = context_coder.decode_codebook(context_coder.encode_codebook(distinct), distinct.size)
    assert np.array_equal(codebook.view(np.uint32), distinct.view(np.uint32))
    for mode in range(len(context_coder.POSITION_MODELS)):
        blob = context_coder.encode_positions(flags, rows, kernel, mode)
        assert np.array_equal(context_coder.decode_positions(blob, rows, weights.size // rows, kernel, positions.size, mode), flags)
    predictor = context_coder.fit_predictor(levels, flags, rows, kernel, negatives, distinct)
    assert len(predictor) == context_coder.PREDICTOR_TAPS and all(abs(c) <= context_coder.COEFFICIENT_LIMIT for c in predictor)
    for model in (0, 7, 13, 27, 31, 32, 45, 63):  # every flag bit on and off
        blob = context_coder.encode_codes(levels, flags, rows, kernel, negatives, distinct.size - negatives, model, distinct, predictor)
        decoded = context_coder.decode_codes(blob, flags, rows, kernel, negatives, distinct.size - negatives, model, distinct, predictor)
        assert np.array_equal(decoded, levels)


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_model_shape_roundtrips_at_every_bit_width(bits):
    rng = np.random.default_rng(bits)
    for shape in _weight_shapes():
        density = rng.choice([0.02, 0.3, 0.9, 1.0])
        if int(np.prod(shape)) > 200_000:
            density = 0.05  # the largest layers: keep the test fast
        _roundtrip_layer(_random_layer(rng, shape, bits, density), shape)


def test_edge_layers_roundtrip_through_the_file():
    """An empty layer, a layer with one non-zero weight (first, last), one value on one
    side of zero only, and a -0.0 (kept raw) all come back bit for bit."""
    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=2)
    weights = [p for p in model.parameters() if p.dim() > 1]
    with torch.no_grad():
        for p in weights:
            p.zero_()
        weights[1].view(-1)[0] = 0.5
        weights[2].view(-1)[-1] = -1.25
        weights[3].view(-1)[::7] = 3.0
        weights[4].view(-1)[::3] = -2.0
        weights[4].view(-1)[1::3] = -1.0
        weights[5].view(-1)[5] = -0.0
        weights[5].view(-1)[6] = 1.0
    data = encode(model)
    decoded = decode(data)
    for (name, a), b in zip(model.state_dict().items(), decoded.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b)), name
    rows = {r["layer"]: r for r in layer_sizes(data)}
    assert rows[f"{_name_of(model, weights[1])}"]["nonzero"] == 1


def _name_of(model, parameter):
    return next(name for name, p in model.named_parameters() if p is parameter)


def test_layer_sizes_name_each_streams_model():
    rows = layer_sizes(encode(_compressed(bits=4)))
    shared = [r for r in rows if r["bits"] <= 8]
    assert shared and all(r["format_version"] == 3 for r in rows)
    assert all(r["codes_model"].startswith("context ") and r["positions_model"].split()[-1] in context_coder.POSITION_MODELS for r in shared)
    v1_rows = layer_sizes(_V1)
    assert all(r["format_version"] == 2 for r in v1_rows)
    assert {r["codes_model"] for r in v1_rows if r["bits"] <= 8} <= {"order-0 ans", "order-0 packed"}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(RELEASED), reason="../shared/models/squeezenet-deep-compression is absent")
def test_released_model_roundtrips_and_v3_is_smaller_than_v2():
    from sqz.compress.dcnet import load_dcnet

    with open(RELEASED, "rb") as f:
        model = load_dcnet(f.read())
    v2, v3 = encode(model, version=2), encode(model)
    assert len(v3) < len(v2)
    for data in (v2, v3):
        decoded = decode(data)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), decoded.state_dict().values()))


def test_context_decoders_on_random_bytes_keep_their_invariants():
    """Garbage into each numba decoder: None (a clear error upstream) or output that
    respects what the header promised (count of non-zeros, magnitudes within the codebook)."""
    rng = np.random.default_rng(1)
    for _ in range(400):
        data = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8).tobytes()
        rows, kernel = int(rng.integers(1, 50)), int(rng.choice([1, 9, 49]))
        inner = kernel * int(rng.integers(1, 20))
        nonzero = int(rng.integers(1, rows * inner + 1))
        codebook = context_coder.decode_codebook(data, int(rng.integers(1, 257)))
        assert codebook is None or (codebook.dtype == np.float32 and codebook.size >= 1)
        flags = context_coder.decode_positions(data, rows, inner, kernel, nonzero, int(rng.integers(0, len(context_coder.POSITION_MODELS))))
        if flags is None:
            continue
        assert flags.size == rows * inner and int(flags.sum()) == nonzero
        negatives = int(rng.integers(0, 256))
        positives = max(1, int(rng.integers(0, 257 - negatives)))
        book = np.sort(rng.standard_normal(negatives + positives)).astype(np.float32)
        taps = [int(c) for c in rng.integers(-context_coder.COEFFICIENT_LIMIT, context_coder.COEFFICIENT_LIMIT + 1, context_coder.PREDICTOR_TAPS)]
        levels = context_coder.decode_codes(data, flags, rows, kernel, negatives, positives, int(rng.integers(0, context_coder.CODE_MODELS)), book, taps)
        if levels is not None:
            assert np.array_equal(levels != 0, flags != 0) and levels.min() >= -negatives and levels.max() <= positives


def test_codes_predictor_is_fitted_stored_and_checked():
    """A layer whose neighbouring weights are alike: the encoder picks the prediction
    context (model bit 32) and stores its taps; a file whose taps are missing or out of
    range is refused with a clear error."""
    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=2)
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] == 3]
    with torch.no_grad():
        for p in weights:  # smooth kernels: each tap a small step from its left neighbour
            p.copy_(torch.cumsum(torch.randn_like(p) * 0.1, dim=-1) + torch.randn(p.shape[:2] + (1, 1)))
    quantize_(model, QuantConfig(bits=6))
    data = encode(model)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), decode(data).state_dict().values()))
    header, payload = read_header(data)
    predicted = [e for e in header["tensors"] if isinstance(e.get("codes_model"), int) and e["codes_model"] & 32]
    assert predicted and all(len(e["codes_predictor"]) == context_coder.PREDICTOR_TAPS for e in predicted)
    for bad in (None, [1] * 5, [context_coder.COEFFICIENT_LIMIT + 1] + [0] * 5, [True] * 6):
        hostile = json.loads(json.dumps(header))
        entry = next(e for e in hostile["tensors"] if e["name"] == predicted[0]["name"])
        entry["codes_predictor"] = bad
        with pytest.raises(CorruptFileError, match="codes predictor"):
            decode(_repack(hostile, bytes(payload)))


def test_float_tensors_roundtrip_through_the_context_coder():
    """Every float32 bit pattern comes back: NaN payloads, infinities, -0.0, subnormals;
    a file stores a bias this way only where it is smaller than the byte planes."""
    rng = np.random.default_rng(3)
    special = np.array([np.nan, -np.inf, np.inf, -0.0, 0.0, 1e-45, -3e-39, 3.4e38], dtype=np.float32)
    for values in (special, rng.standard_normal(1000).astype(np.float32) * 0.1, np.zeros(0, np.float32),
                   rng.integers(0, 2**32, 500, dtype=np.uint64).astype(np.uint32).view(np.float32)):  # fmt: skip
        decoded = context_coder.decode_floats(context_coder.encode_floats(values), values.size)
        assert np.array_equal(decoded.view(np.uint32), values.view(np.uint32))
    for _ in range(200):  # garbage: None or exactly the count asked for
        data = rng.integers(0, 256, int(rng.integers(0, 100)), dtype=np.uint8).tobytes()
        decoded = context_coder.decode_floats(data, 37)
        assert decoded is None or (decoded.dtype == np.float32 and decoded.size == 37)
    header, _ = read_header(_SMALL)
    kinds = {tuple(s[0] for s in e["streams"]) for e in header["tensors"] if e["kind"] == "float"}
    assert ("floats",) in kinds


def test_kernel_position_model_learns_kernel_strength():
    """Kernels that keep all or none of their weights (strength varies by kernel, not by
    weight): the flags coded with the count kept so far in the kernel take less than
    the plain significance flags (whose flag-before context already sees some of it),
    and come back exactly."""
    rng = np.random.default_rng(5)
    rows, inner, kernel = 64, 32 * 9, 9
    keep = rng.random((rows, inner // kernel)) < 0.35
    noise = rng.random((rows, inner // kernel, kernel)) < 0.1
    flags = np.where(keep[:, :, None], ~noise, noise).astype(np.int8).ravel()
    mode = context_coder.POSITION_MODELS.index("sig+kernel")
    by_kernel = context_coder.encode_positions(flags, rows, kernel, mode)
    plain = context_coder.encode_positions(flags, rows, kernel, context_coder.POSITION_MODELS.index("sig"))
    assert len(by_kernel) < 0.9 * len(plain)  # measured 1,392 B against 1,633
    assert np.array_equal(context_coder.decode_positions(by_kernel, rows, inner, kernel, int(flags.sum()), mode), flags)
