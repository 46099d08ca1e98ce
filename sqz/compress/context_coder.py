"""Adaptive context-modelled coding of a weight-shared layer and of float tensors (.sqz
format version 3).

A binary arithmetic coder in the spirit of CABAC (the range coder of LZMA: 32-bit range,
carry-propagating low) with adaptive binary contexts, compiled with numba. Every
multi-valued symbol is binarised (a significance flag, a sign, a magnitude bit by bit
down a binary tree, the length class and bits of a gap) and each binary decision has its
own probability, chosen by a context and updated after every bit. So nothing but the
bits themselves is stored: no frequency tables, and probabilities follow drift inside a
layer. A probability moves 1/(n+2) of the way towards each bit it sees (n = bits seen
so far, capped at 1022): the running frequency at first, so a rare context learns in a
few bits, then a slow exponential forgetting that settles on a precise value in the big
layers. (A CABAC-style mean of a 1/16 and a 1/128 estimate measured ~1% larger on the
released model: the fast half is noisy on near-uniform magnitude bits.)

Why binary contexts rather than rANS with adaptive frequencies: measured on the released
SqueezeNet, the gains come from conditioning (sign and magnitude on the previous weight
of the same kernel and the kernel's non-zero count, flags on the kernel position, the
flag before and the weight above), which multiplies the number of distributions. A
256-ary adaptive frequency table per context learns slowly (each of its 256 counts must
be seen) and must be renormalised for rANS on every update; a binary tree of 8 adaptive
bits learns the coarse shape (sign, magnitude class) within tens of symbols, costs one
multiply per bit, and lets the contexts split only the top of the tree (code model bit
8). Order-0 rANS is what format version 2 does; float tensors (biases) get a coder of
their own here (``encode_floats``), kept per tensor where it beats the byte planes.

Streams of one layer (each its own arithmetic-coded byte string):
- codebook: the used float32 values, ascending, as integer deltas of their order-preserving
  bit patterns (Exp-Golomb binarisation, the length class conditioned on the previous one);
- positions: either one significance flag per weight (context: position in the kernel,
  the flag before it in the kernel, and in ``sig+col`` the same weight of the previous
  output channel and the row's density so far, in ``sig+rate`` the share of the column
  kept in the rows so far, the weight above and the row's density, in ``sig+kernel`` the count of weights
  kept so far in the same kernel) or the gap before each non-zero weight
  (Exp-Golomb, length class conditioned on the previous gap's); the encoder codes each
  and keeps the smallest (``POSITION_MODELS``);
- codes: for each non-zero weight its signed level (0 = pruned; -r / +r = the r-th
  codebook value below / above zero), a sign then a magnitude bit-tree; ``codes_model``
  bits choose which contexts condition them (1: sign split, 2: previous level in the
  kernel, 4: the kernel's non-zero count, or for 1x1 kernels the output channel's running
  mean magnitude, 8: contexts on the top tree levels only, 16: the left and upper
  neighbours in the kernel in place of the previous level, 32: a linear prediction from
  six causal neighbours, its taps fitted by least squares per layer and stored, placed
  among the codebook values: one of 16 classes); the encoder tries the models in
  ``codec._CODE_MODELS_TRIED`` and keeps the smallest.
- floats (a float tensor, not weight-shared): sign and exponent down a 512-leaf tree,
  the top mantissa bit with a context, the other 22 bypassed.

What was measured on the released Deep Compression SqueezeNet (8-bit, 524,894 B before
this round of work, 520,797 B after; "sim" = an ideal-code-length simulation in Python
of the same adaptive estimator, not the coder itself):
- kept: the predictor (bit 32): values of neighbouring weights correlate (r = 0.5-0.8
  left/up in the later 3x3 layers, 0.7 in conv1, 0.46 between adjacent classifier rows:
  neighbouring ImageNet classes), codes 375,190 -> 373,688 B; ``sig+kernel`` positions
  (the 3x3 layers' kernel counts are overdispersed: 2,268 empty kernels in
  features.10.expand3x3 where a binomial at its density expects 667) and ``sig+rate``,
  positions 115,695 -> 114,372 B; the float coder, biases 14,980 -> 14,138 B; one
  payload CRC instead of one per tensor, header 1,827 -> 1,427 B.
- dropped: logistic mixing (lpaq-style integer stretch/squash, three inputs: the model's
  context, the previous-level context and an order-0 tree, weights per tree level and
  known prediction) on the top 4 magnitude levels: codes 373,772 -> 373,517 B (-0.07%)
  while decode went 0.11 -> 0.19 s; sim with five inputs on every tree level: 371,961 B
  (-0.5%). The codes carry little that any context predicts: with every feature tried
  (neighbours, previous input channel, row and column running magnitude, kernel count,
  the kernel's mean magnitude so far), the sim stays within 2% of the per-layer order-0
  entropy (378,026 B).
- dropped (sim): the count limit (adaptation rate): 126 / 254 / 1022 / 4094 / none give
  381,221 / 380,904 / 380,742 / 380,755 / 380,815 B for order-0 trees: the data is
  stationary. Initialising the magnitude tree from a codebook-spacing prior (k-means
  density law): -640 B at best. Each kernel's count, then its flags (3x3 layers): 59.3 kB
  against 59.6 kB before ``sig+kernel``, which takes the same information bit by bit
  (sim 58.7 kB). Flags conditioned on the neighbours' magnitudes
  (interleaving positions with codes): -0.5% of positions. In ``sig+kernel``, the weight above as
  well: positions +326 B; in ``sig+rate``, 8 column-share classes instead of 5: -22 B,
  3: +126 B. The column's (input channel's)
  running mean magnitude as the codes' context (an extra model bit, 1x1 layers): picked
  by 2 layers, codes -108 B: not worth a model. Exp-Golomb exponent steps for
  floats: 14,525 B (worse than the tree's 14,138). Finer codebook-delta contexts: at
  most -440 B (sim with a static class table). xz -9e on the raw codes: 384 kB, so no
  long-range repetition either.

The decoder trusts nothing: every context index is bounded by construction, every decoded
magnitude and gap is checked against its alphabet and the tensor before it is used, and
reading past the end of a stream yields zero bytes (the symbol counts, checked against
the architecture beforehand, bound every loop).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["POSITION_MODELS", "CODE_MODELS", "COEFFICIENT_LIMIT", "PREDICTOR_TAPS", "fit_predictor", "quantised_codebook", "encode_codebook", "decode_codebook", "encode_positions",
           "decode_positions", "encode_codes", "decode_codes", "encode_floats", "decode_floats", "signed_levels"]  # fmt: skip

POSITION_MODELS = ("gaps", "sig", "sig+col", "sig+rate", "sig+kernel")
CODE_MODELS = 64  # 32 = the prediction context (see ``fit_predictor``); flag bits: 16 = left + upper neighbours in the kernel instead of the previous, 1 = sign split, 2 = previous level in the kernel, 4 = kernel count / row scale, 8 = contexts on the top tree levels only

_PROB_BITS = 15
_ONE = 1 << _PROB_BITS
_HALF = _ONE >> 1
_STATE_BITS = 22  # probabilities are kept more finely than they are coded
_STATE_ONE = 1 << _STATE_BITS
_COUNT_LIMIT = 1022
_RECIPROCAL = np.array([(1 << 16) // (n + 2) for n in range(_COUNT_LIMIT + 1)], dtype=np.int64)
_P_MIN, _P_MAX = 64, _ONE - 64
_TOP = 1 << 24
# The codes' predictor (model bit 32): taps in 1/64 over a codebook quantised to 2**16,
# so a prediction is an exact integer; its place among the codebook values is one of 15
# classes (+1: no neighbour known). 16 measured better than 8 (-0.2%) on the released model.
PREDICTOR_TAPS = 6
_COEFFICIENT_ONE = 64
COEFFICIENT_LIMIT = 1024
_QBOOK_BITS = 16
_PREDICTION_CLASSES = 17
_PREDICTED_TOP_LEVELS = 4
_MASK32 = 0xFFFFFFFF

# Encoder state: low, range, cache, cache_size, write position, overflow flag.
# Decoder state: code, range, read position.

# ---------------------------------------------------------------- the binary range coder


@njit(cache=True, error_model="numpy")
def _new_probs(n):
    """n adaptive contexts: [probability of a 0 bit (22 bits), bits seen so far]."""
    probs = np.zeros((n, 2), dtype=np.int64)
    probs[:, 0] = _STATE_ONE >> 1
    return probs


@njit(cache=True, inline="always", error_model="numpy")
def _shift_low(low, cache, pending, pos, out):
    """LZMA's carry handling: a byte is held back (with ``pending`` 0xFF bytes) until
    no carry can reach it. Writes past ``out`` are counted, not made: the caller grows
    the buffer and codes again."""
    if low < 0xFF000000 or low > _MASK32:
        carry = low >> 32
        temp = cache
        while True:
            if pos < out.size:
                out[pos] = (temp + carry) & 0xFF
            pos += 1
            temp = 0xFF
            pending -= 1
            if pending == 0:
                break
        cache = (low >> 24) & 0xFF
    pending += 1
    low = (low & 0x00FFFFFF) << 8
    return low, cache, pending, pos


@njit(cache=True, inline="always", error_model="numpy")
def _probability(probs, ctx):
    p = probs[ctx, 0] >> (_STATE_BITS - _PROB_BITS)
    if p < _P_MIN:
        return _P_MIN
    if p > _P_MAX:
        return _P_MAX
    return p


@njit(cache=True, inline="always", error_model="numpy")
def _update(probs, ctx, bit):
    # p moves 1/(n+2) of the way to the bit seen: the running frequency (a
    # Krichevsky-Trofimov estimate) for the first _COUNT_LIMIT bits, then an
    # exponential forgetting at that rate.
    n = probs[ctx, 1]
    target = 0 if bit else _STATE_ONE
    probs[ctx, 0] += ((target - probs[ctx, 0]) * _RECIPROCAL[n]) >> 16
    if n < _COUNT_LIMIT:
        probs[ctx, 1] = n + 1


# The coder's state travels as a tuple (a, range, cache, pending, position): a is ``low``
# when encoding and ``code`` when decoding (cache and pending are the encoder's). Passed
# by value through inlined functions, it stays in registers.


@njit(cache=True, inline="always", error_model="numpy")
def _code_raw(dec, s, buf, p, bit):
    a, rng, cache, pending, pos = s
    bound = (rng >> _PROB_BITS) * p
    if dec:
        if a < bound:
            rng = bound
            bit = 0
        else:
            a -= bound
            rng -= bound
            bit = 1
        while rng < _TOP:
            rng = (rng << 8) & _MASK32
            byte = np.int64(buf[pos]) if pos < buf.size else np.int64(0)  # zeros past the end
            pos += 1
            a = ((a << 8) | byte) & _MASK32
    else:
        if bit:
            a += bound
            rng -= bound
        else:
            rng = bound
        while rng < _TOP:
            rng = (rng << 8) & _MASK32
            a, cache, pending, pos = _shift_low(a, cache, pending, pos, buf)
    return (a, rng, cache, pending, pos), np.int64(bit)


@njit(cache=True, inline="always", error_model="numpy")
def _bit(dec, s, buf, probs, ctx, bit):
    """One adaptive binary decision: encodes ``bit`` or (``dec``) decodes it; returns the
    new state and the bit. One body for both directions keeps the models identical."""
    s, bit = _code_raw(dec, s, buf, _probability(probs, ctx), bit)
    _update(probs, ctx, bit)
    return s, bit


@njit(cache=True, inline="always", error_model="numpy")
def _bypass(dec, s, buf, bit):
    return _code_raw(dec, s, buf, _HALF, bit)


@njit(cache=True, inline="always", error_model="numpy")
def _load(st):
    return (st[0], st[1], st[2], st[3], st[4])


@njit(cache=True, inline="always", error_model="numpy")
def _store(st, s):
    st[0], st[1], st[2], st[3], st[4] = s


def _new_state(dec: bool, data: np.ndarray | None) -> np.ndarray:
    st = np.zeros(5, dtype=np.int64)
    st[1] = _MASK32
    if dec:
        for _ in range(4):  # the encoder's first byte is always 0 and is not stored
            st[0] = ((st[0] << 8) | (int(data[st[4]]) if st[4] < data.size else 0)) & _MASK32
            st[4] += 1
    else:
        st[3] = 1
    return st


@njit(cache=True, error_model="numpy")
def _finish(st, out):
    low, cache, pending, pos = st[0], st[2], st[3], st[4]
    for _ in range(5):
        low, cache, pending, pos = _shift_low(low, cache, pending, pos, out)
    st[4] = pos


def _run_encoder(kernel, capacity: int, *args) -> bytes:
    """Run a coding kernel in encode mode, growing the output buffer until it fits."""
    while True:
        st = _new_state(False, None)
        out = np.zeros(capacity, dtype=np.uint8)
        status = kernel(False, st, out, *args)
        if status != 0:
            raise ValueError(f"context coder: encoder kernel failed with status {status}")
        _finish(st, out)
        if st[4] <= out.size:
            return out[1 : st[4]].tobytes()
        capacity = 2 * int(st[4])


def _bit_length(value: int) -> int:
    return int(value).bit_length()


# ---------------------------------------------------------------- Exp-Golomb with contexts


@njit(cache=True, inline="always", error_model="numpy")
def _length_class(value):
    """Exp-Golomb length class of ``value`` >= 1: the position of its leading one."""
    cls = 0
    while value > 1:
        value >>= 1
        cls += 1
    return cls


@njit(cache=True, inline="always", error_model="numpy")
def _eg_bits(dec, s, buf, probs, base, value, max_class):
    """value >= 1: its length class (unary, one context per step under ``base``) then its
    bits below the leading one (the top two with contexts per class, the rest bypassed).
    Returns the value, or -1 if a decoded class exceeds ``max_class``."""
    cls = _length_class(value) if not dec else 0
    c = 0
    while True:
        more = 1 if (not dec and c < cls) else 0
        s, more = _bit(dec, s, buf, probs, base + min(c, 31), more)
        if not more:
            break
        c += 1
        if c > max_class:
            return s, np.int64(-1)
    cls = c
    result = 1
    for j in range(cls - 1, -1, -1):
        b = (value >> j) & 1 if not dec else 0
        depth = cls - 1 - j
        if depth < 2:
            ctx = base + 32 + min(cls, 32) * 4 + depth * 2 + (result & 1)
            s, b = _bit(dec, s, buf, probs, ctx, b)
        else:
            s, b = _bypass(dec, s, buf, b)
        result = (result << 1) | b
    return s, result


_EG_CONTEXTS = 32 + 33 * 4  # unary steps + (class, depth, previous bit)


# ---------------------------------------------------------------- codebook


@njit(cache=True, error_model="numpy")
def _code_codebook(dec, st, buf, keys, count):
    """keys: strictly increasing order-preserving uint32 patterns, as int64."""
    s = _load(st)
    probs = _new_probs(32 + _EG_CONTEXTS)
    if count == 0:
        _store(st, s)
        return 0
    first = 0
    for j in range(31, -1, -1):
        b = (keys[0] >> j) & 1 if not dec else 0
        s, b = _bit(dec, s, buf, probs, 31 - j, b)
        first = (first << 1) | b
    keys[0] = first
    for i in range(1, count):
        delta = keys[i] - keys[i - 1] if not dec else 1
        # one context set: 255 deltas are too few to learn statistics per previous class
        s, delta = _eg_bits(dec, s, buf, probs, 32, delta, 31)
        if delta < 1:
            return 1
        keys[i] = keys[i - 1] + delta
        if keys[i] > _MASK32:
            return 2
    _store(st, s)
    return 0


def _float_keys(values: np.ndarray) -> np.ndarray:
    bits = values.astype("<f4").view("<u4").astype(np.int64)
    return np.where(bits >= 1 << 31, (~bits) & _MASK32, bits | (1 << 31))


def _key_floats(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys >= 1 << 31, keys & 0x7FFFFFFF, (~keys) & _MASK32)
    return bits.astype("<u4").view("<f4")


def encode_codebook(values: np.ndarray) -> bytes:
    """``values``: ascending, distinct, finite, non-zero float32."""
    keys = _float_keys(values)
    if np.any(np.diff(keys) <= 0):
        raise ValueError("codebook: values must be distinct and ascending")
    return _run_encoder(_code_codebook, 64 + 8 * keys.size, keys.copy(), keys.size)


def decode_codebook(data: bytes, count: int) -> np.ndarray | None:
    """The float32 codebook, or None if the stream is inconsistent."""
    buf = np.frombuffer(data, dtype=np.uint8).copy()  # writable: one kernel body encodes and decodes
    keys = np.zeros(count, dtype=np.int64)
    if _code_codebook(True, _new_state(True, buf), buf, keys, count) != 0:
        return None
    return _key_floats(keys)


# ---------------------------------------------------------------- float32 tensors

_MANTISSA_CONTEXT_BITS = 1  # the rest of the 23 mantissa bits are near uniform: bypassed


@njit(cache=True, error_model="numpy")
def _code_floats(dec, st, buf, patterns, count):
    """patterns: the uint32 bit patterns of float32 values, as int64; filled when decoding.
    Sign and exponent as one 9-bit symbol down an adaptive tree (trained biases span a
    few octaves), the top mantissa bits down a small tree of their own, the rest bypassed.
    Any pattern (NaN, infinities, -0.0) codes. Measured on the released model's biases:
    14,980 B as byte planes; this tree 14,249 B with the exponent as the mantissa's
    context, 14,174 B without (1 such bit: 14,138 B; 5: 14,254 B); the exponent as an Exp-Golomb step from the previous one
    14,525 B (a bias layer holds 16 to 1000 values: little to learn a step law from)."""
    s = _load(st)
    head = _new_probs(512)
    mantissa_tree = 1 << _MANTISSA_CONTEXT_BITS
    mantissa = _new_probs(mantissa_tree)
    raw_bits = 23 - _MANTISSA_CONTEXT_BITS
    for i in range(count):
        value = patterns[i] if not dec else 0
        node = 1
        for d in range(8, -1, -1):
            b = (value >> (23 + d)) & 1 if not dec else 0
            s, b = _bit(dec, s, buf, head, node, b)
            node = (node << 1) | b
        result = node - 512
        node = 1
        for d in range(_MANTISSA_CONTEXT_BITS - 1, -1, -1):
            b = (value >> (raw_bits + d)) & 1 if not dec else 0
            s, b = _bit(dec, s, buf, mantissa, node, b)
            node = (node << 1) | b
        result = (result << _MANTISSA_CONTEXT_BITS) | (node - mantissa_tree)
        for d in range(raw_bits - 1, -1, -1):
            b = (value >> d) & 1 if not dec else 0
            s, b = _bypass(dec, s, buf, b)
            result = (result << 1) | b
        patterns[i] = result
    _store(st, s)
    return 0


def encode_floats(values: np.ndarray) -> bytes:
    patterns = values.astype("<f4").view("<u4").astype(np.int64)
    return _run_encoder(_code_floats, 64 + 4 * patterns.size, patterns, patterns.size)


def decode_floats(data: bytes, count: int) -> np.ndarray | None:
    """``count`` float32 values, or None if an exponent steps out of range."""
    buf = np.frombuffer(data, dtype=np.uint8).copy()  # writable: one kernel body encodes and decodes
    patterns = np.zeros(count, dtype=np.int64)
    if _code_floats(True, _new_state(True, buf), buf, patterns, count) != 0:
        return None
    return patterns.astype("<u4").view("<f4")


# ---------------------------------------------------------------- positions


@njit(cache=True, error_model="numpy")
def _code_positions(dec, st, buf, flags, rows, inner, kernel, nonzero, mode):
    """flags: int8, one per weight (rows x inner), 1 where non-zero; filled when decoding.
    mode 0: gaps; 1: significance flags; 2: flags with the weight above and the row's
    density; 3: with the column's kept share, the weight above and the
    row's density; 4: with the count kept
    so far in the kernel (``POSITION_MODELS`` names them)."""
    s = _load(st)
    if mode == 0:
        s, status = _code_gaps(dec, s, buf, flags, rows * inner, nonzero)
    else:
        s, status = _code_flags(dec, s, buf, flags, rows, inner, kernel, nonzero, mode)
    if status != 0:
        return status
    _store(st, s)
    return 0


@njit(cache=True, error_model="numpy")
def _code_gaps(dec, s, buf, flags, numel, nonzero):
    """Positions model 0: the gap before each non-zero weight, Exp-Golomb, its length
    class conditioned on the previous gap's (6 context sets: long gaps come in runs where
    a layer is sparse). Returns the coder state and 0, or a decoder's error status."""
    probs = _new_probs(6 * _EG_CONTEXTS)
    cursor = 0
    previous_class = 0
    for n in range(nonzero):
        gap = 0
        if not dec:
            while flags[cursor + gap] == 0:
                gap += 1
        s, value = _eg_bits(dec, s, buf, probs, min(previous_class, 5) * _EG_CONTEXTS, gap + 1, 31)
        if value < 1:
            return s, 3
        gap = value - 1
        if cursor + gap > numel - (nonzero - n):
            return s, 4  # the gap leaves no room for the remaining non-zero weights
        for i in range(cursor, cursor + gap):
            flags[i] = 0
        flags[cursor + gap] = 1
        cursor += gap + 1
        previous_class = _length_class(value)
    for i in range(cursor, numel):
        flags[i] = 0
    return s, 0


@njit(cache=True, error_model="numpy")
def _code_flags(dec, s, buf, flags, rows, inner, kernel, nonzero, mode):
    """Positions models 1-4: one significance flag per weight, in its context
    (``_flag_context``). Flags the count of non-zero weights already decides are not
    coded: all zero once every non-zero weight is placed, all one when as many remain."""
    numel = rows * inner
    kernel_classes = kernel if kernel <= 9 else 10
    probs = _new_probs(kernel_classes * 10 * 6 * 2 * 5)
    column_counts = np.zeros(inner if mode == 3 else 1, dtype=np.int64)
    left_to_place = nonzero
    for r in range(rows):
        row_count = 0
        kept = 0
        for j in range(inner):
            idx = r * inner + j
            k = j % kernel
            if k == 0:
                kept = 0  # weights kept so far in this kernel
            if left_to_place == 0:
                flags[idx] = 0
                continue
            if left_to_place == numel - idx:
                flags[idx] = 1
                left_to_place -= 1
                kept += 1
                continue
            # the neighbouring flags read here: a helper given the arrays measured 1.4-1.7x
            # slower (its reference counting in the innermost loop)
            before = flags[idx - 1] if k > 0 else 0
            upper = flags[idx - inner] if r > 0 else 0
            column = column_counts[j] if mode == 3 else 0
            ctx = _flag_context(mode, r, j, k, kernel, before, upper, column, kept, row_count)
            bit = flags[idx] if not dec else 0
            s, bit = _bit(dec, s, buf, probs, ctx, bit)
            flags[idx] = bit
            row_count += bit
            kept += bit
            left_to_place -= bit
            if mode == 3:
                column_counts[j] += bit
    return s, 0


@njit(cache=True, inline="always", error_model="numpy")
def _flag_context(mode, r, j, k, kernel, before, upper, column, kept, row_count):
    """The context of a flag (row r, ``j`` within the row, ``k`` within its kernel): the
    position in the kernel (in tenths past 9 taps) and the flag ``before`` it in the
    kernel, then by ``mode`` (2: the flag above, ``upper``; 3: the share of the column
    kept in the rows so far, ``column`` of r, and the flag above; 4: the count kept so
    far in the kernel) and the row's density so far. Every mode indexes the same
    (kernel class, 10, 6, 2, 5) table."""
    kc = k if kernel <= 9 else (k * 10) // kernel
    left = 0 if k == 0 else 1 + before
    ctx = kc * 3 + left
    if mode < 2:
        return ctx * 10
    if mode == 4:
        # the kernel's own kept weights so far: kernels differ in strength far
        # more than a binomial count would (3x3 layers of the released model)
        ctx = kc * 10 + (min(9, kept) if kernel <= 9 else min(9, (kept * 10) // kernel))
        above = left
    elif mode == 2:
        above = upper
    else:
        # the share of this column kept in the rows so far (an input channel
        # that matters keeps more of its weights in every output channel)
        above = 0 if r < 4 else 1 + min(4, (5 * column) // r)
    density = 0 if j < 8 else 1 + min(3, (4 * row_count) // j)
    same = upper if mode == 3 else 0
    return ((ctx * 6 + above) * 2 + same) * 5 + density


def encode_positions(flags: np.ndarray, rows: int, kernel: int, mode: int) -> bytes:
    nonzero = int(flags.sum())
    inner = flags.size // rows
    capacity = 64 + (flags.size if mode else 8 * nonzero)
    return _run_encoder(_code_positions, capacity, flags.astype(np.int8), rows, inner, kernel, nonzero, mode)


def decode_positions(data: bytes, rows: int, inner: int, kernel: int, nonzero: int, mode: int) -> np.ndarray | None:
    buf = np.frombuffer(data, dtype=np.uint8).copy()  # writable: one kernel body encodes and decodes
    flags = np.zeros(rows * inner, dtype=np.int8)
    if _code_positions(True, _new_state(True, buf), buf, flags, rows, inner, kernel, nonzero, mode) != 0:
        return None
    return flags


# ---------------------------------------------------------------- codes (signed levels)


@njit(cache=True, inline="always", error_model="numpy")
def _kernel_width(kernel):
    """The side of a square kernel (the largest whose square fits, for any other size):
    the weight above is ``width`` back in the scan."""
    width = 1
    while (width + 1) * (width + 1) <= kernel:
        width += 1
    return width


@njit(cache=True, inline="always", error_model="numpy")
def _level_value(levels, qbook, negatives, at):
    """The quantised codebook value of the weight at ``at`` (0 where pruned)."""
    level = levels[at]
    if level == 0:
        return np.int64(0)
    return qbook[level + negatives if level < 0 else level + negatives - 1]


@njit(cache=True, inline="always", error_model="numpy")
def _neighbours(levels, qbook, negatives, r, j, idx, inner, kernel, width, out):
    """The causal neighbours of the weight at ``idx`` (row r, ``j`` within the row), as
    quantised values (0 where pruned or absent). Kernels: left, up, up-left, up-right in
    the kernel, the same tap of the previous input channel, of the previous output
    channel. 1x1: the same weight in the five previous rows (adjacent classifier rows are
    related ImageNet classes: five rows measured 74 B smaller than three), the previous weight."""
    for q in range(PREDICTOR_TAPS):
        out[q] = 0
    if kernel > 1:
        k = j % kernel
        x = k % width
        if x != 0:
            out[0] = _level_value(levels, qbook, negatives, idx - 1)
        if k >= width:
            out[1] = _level_value(levels, qbook, negatives, idx - width)
            if x != 0:
                out[2] = _level_value(levels, qbook, negatives, idx - width - 1)
            if x != width - 1:
                out[3] = _level_value(levels, qbook, negatives, idx - width + 1)
        if j >= kernel:
            out[4] = _level_value(levels, qbook, negatives, idx - kernel)
        if r > 0:
            out[5] = _level_value(levels, qbook, negatives, idx - inner)
    else:
        for q in range(5):
            if r > q:
                out[q] = _level_value(levels, qbook, negatives, idx - (q + 1) * inner)
        if j > 0:
            out[5] = _level_value(levels, qbook, negatives, idx - 1)


@njit(cache=True, error_model="numpy")
def _predictor_features(levels, flags, qbook, negatives, rows, inner, kernel):
    """(non-zero weights x taps) matrix of neighbour values, for the encoder's fit."""
    width = _kernel_width(kernel)
    count = 0
    for i in range(flags.size):
        count += flags[i]
    features = np.zeros((count, PREDICTOR_TAPS), dtype=np.int64)
    targets = np.zeros(count, dtype=np.int64)
    row = np.zeros(PREDICTOR_TAPS, dtype=np.int64)
    n = 0
    for r in range(rows):
        for j in range(inner):
            idx = r * inner + j
            if flags[idx] == 0:
                continue
            _neighbours(levels, qbook, negatives, r, j, idx, inner, kernel, width, row)
            features[n] = row
            targets[n] = _level_value(levels, qbook, negatives, idx)
            n += 1
    return features, targets


@njit(cache=True, error_model="numpy")
def _code_levels(dec, st, buf, levels, flags, rows, inner, kernel, negatives, positives, model, qbook, coefficients):
    """levels: int32 per weight, 0 where flags is 0, else -r / +r; filled when decoding.
    qbook, coefficients: the quantised codebook and the predictor's taps (model bit 32).
    Each level: its sign, then its magnitude down a binary tree, in the classes that the model bits switch on."""
    s = _load(st)
    magnitude_max = max(negatives, positives)
    depth, classes, sign_stride, split_levels, use_kernel, use_row, use_neighbours, use_predictor = _level_model(
        model, kernel, magnitude_max)  # fmt: skip
    width = _kernel_width(kernel)
    tree = 1 << depth
    sign_probs = _new_probs(3 * classes * 4)
    mag_probs = _new_probs(2 * classes * 4 * tree)
    taps = np.zeros(PREDICTOR_TAPS, dtype=np.int64)
    scaled_book = qbook * _COEFFICIENT_ONE
    layer_sum = layer_count = 0
    for r in range(rows):
        row_sum = row_count = 0
        previous = in_kernel = 0
        for j in range(inner):
            idx = r * inner + j
            if j % kernel == 0:
                previous = 0
                in_kernel = _kept_in_kernel(flags, idx, kernel)
            if flags[idx] == 0:
                if dec:
                    levels[idx] = 0
                continue
            value = levels[idx] if not dec else 0
            if use_neighbours:
                previous = _left_up_level(levels, idx, j % kernel, width)
            kc = ps = 0  # the kernel class (magnitude context) and the sign class
            if use_predictor:
                kc = ps = _prediction_class(levels, qbook, scaled_book, negatives, negatives + positives, coefficients,
                                            r, j, idx, inner, kernel, width, taps)  # fmt: skip
            elif use_kernel:
                kc, ps = _previous_classes(previous, magnitude_max)
            rc = _row_class(kernel, in_kernel, row_sum, row_count, layer_sum, layer_count) if use_row else 0
            # sign, then magnitude: here, as a helper given the arrays measured 9% slower (refcounts)
            s, negative = _bit(dec, s, buf, sign_probs, ps * 4 + rc, 1 if value < 0 else 0)
            limit = negatives if negative else positives
            if limit == 0:
                return 5  # a sign with no codebook value on that side
            m = (-value if value < 0 else value) - 1 if not dec else 0
            sign_set = negative * sign_stride
            context_set = sign_set + kc * 4 + rc
            node = 1
            for d in range(depth - 1, -1, -1):
                b = (m >> d) & 1 if not dec else 0
                level_set = context_set if depth - 1 - d < split_levels else sign_set
                s, b = _bit(dec, s, buf, mag_probs, level_set * tree + node, b)
                node = (node << 1) | b
            m = node - tree
            if m >= limit:
                return 6
            magnitude = m + 1
            levels[idx] = previous = -magnitude if negative else magnitude
            row_sum, row_count = row_sum + magnitude, row_count + 1
            layer_sum, layer_count = layer_sum + magnitude, layer_count + 1
    _store(st, s)
    return 0


@njit(cache=True, inline="always", error_model="numpy")
def _level_model(model, kernel, magnitude_max):
    """What the codes' model bits (``CODE_MODELS``) switch on, as the coder's sizes: the
    magnitude tree's depth; the classes per sign set (_PREDICTION_CLASSES with the
    predictor, else 4); the stride between the two signs' context sets (bit 1; 0: one set
    for both); the tree levels the contexts split (bit 8: the top 3, or 4 with the
    predictor: the finer bits share one set and learn faster; else all); then the flags
    use_kernel (bit 2), use_row (4), use_neighbours (16, kernels only), use_predictor (32)."""
    depth = _tree_depth(magnitude_max)
    use_predictor = (model >> 5) & 1
    classes = _PREDICTION_CLASSES if use_predictor else 4
    sign_stride = classes * 4 if model & 1 else 0
    split_levels = (_PREDICTED_TOP_LEVELS if use_predictor else 3) if (model >> 3) & 1 else depth
    use_neighbours = ((model >> 4) & 1) == 1 and kernel > 1
    return depth, classes, sign_stride, split_levels, (model >> 1) & 1, (model >> 2) & 1, use_neighbours, use_predictor


@njit(cache=True, inline="always", error_model="numpy")
def _tree_depth(magnitude_max):
    """Levels of the binary magnitude tree: the fewest bits that hold magnitude - 1."""
    depth = 0
    while (1 << depth) < magnitude_max:
        depth += 1
    return depth


@njit(cache=True, inline="always", error_model="numpy")
def _kept_in_kernel(flags, start, kernel):
    """Non-zero weights in the kernel starting at ``start`` (positions are decoded before
    the codes, so the whole kernel's count is known before its first level)."""
    count = 0
    for q in range(start, start + kernel):
        count += flags[q]
    return count


@njit(cache=True, inline="always", error_model="numpy")
def _left_up_level(levels, idx, k, width):
    """Model bit 16's stand-in for the previous level: the left and upper neighbours in
    the kernel (already coded), their mean where both are non-zero, else the one that is
    (or 0). Their sign and mean magnitude predict this weight's."""
    left = levels[idx - 1] if k % width != 0 else 0
    up = levels[idx - width] if k >= width else 0
    both = (1 if left != 0 else 0) + (1 if up != 0 else 0)
    return (left + up) // both if both > 1 else left + up


@njit(cache=True, inline="always", error_model="numpy")
def _previous_classes(previous, magnitude_max):
    """Model bit 2's classes from the previous level in the kernel: its magnitude in
    thirds of the larger codebook side (1-3) and its sign (1: negative, 2: positive);
    0 and 0 with none."""
    if previous == 0:
        return 0, 0
    m = previous if previous > 0 else -previous
    return 1 + min(2, (3 * (m - 1)) // magnitude_max), 1 if previous < 0 else 2


@njit(cache=True, inline="always", error_model="numpy")
def _prediction_class(levels, qbook, scaled_book, negatives, size, coefficients, r, j, idx, inner, kernel, width, taps):
    """Model bit 32's class (0 to _PREDICTION_CLASSES - 1): the linear prediction from the
    causal neighbours (``_neighbours``, taps in 1/64), placed among the ``size`` codebook
    values: 1 + which sixteenth of the codebook lies below it; 0 when no neighbour is
    known. Integer arithmetic throughout, so encoder and decoder agree on every machine."""
    _neighbours(levels, qbook, negatives, r, j, idx, inner, kernel, width, taps)
    prediction = 0
    known = 0
    for q in range(PREDICTOR_TAPS):
        prediction += coefficients[q] * taps[q]
        known |= taps[q]
    if known == 0:
        return 0
    lo, hi = 0, size
    while lo < hi:  # how many codebook values lie below the prediction
        mid = (lo + hi) >> 1
        if scaled_book[mid] < prediction:
            lo = mid + 1
        else:
            hi = mid
    return 1 + min(_PREDICTION_CLASSES - 2, (lo * (_PREDICTION_CLASSES - 1)) // (size + 1))


@njit(cache=True, inline="always", error_model="numpy")
def _row_class(kernel, in_kernel, row_sum, row_count, layer_sum, layer_count):
    """Model bit 4's row class (0-3). Kernels: the kernel's non-zero count, in quarters of
    its size. 1x1: the output channel's running mean magnitude against the layer's so far
    (1: under 3/4 of it, 3: over 4/3, 2: between; 0: nothing coded yet in the row)."""
    if kernel > 1:
        return min(3, ((in_kernel - 1) * 4) // kernel)
    if row_count == 0:
        return 0
    a = row_sum * layer_count
    b = layer_sum * row_count
    return 1 if 4 * a < 3 * b else (3 if 3 * a > 4 * b else 2)


def signed_levels(codes: np.ndarray, negatives: int) -> np.ndarray:
    """Codebook index (ascending values, ``negatives`` of them below zero) -> signed level."""
    return np.where(codes < negatives, codes - negatives, codes - negatives + 1).astype(np.int32)


def quantised_codebook(codebook: np.ndarray | None, size: int) -> np.ndarray:
    """The codebook as integers (the largest magnitude at 2**16), so that the predictor
    is integer arithmetic: the same on every machine. Zeros without a codebook."""
    if codebook is None:
        return np.zeros(size, dtype=np.int64)
    values = codebook.astype(np.float64)
    scale = float(np.abs(values).max()) if values.size else 1.0
    return np.rint(values / scale * (1 << _QBOOK_BITS)).astype(np.int64)


def fit_predictor(levels: np.ndarray, flags: np.ndarray, rows: int, kernel: int, negatives: int, codebook: np.ndarray) -> list[int]:
    """Least-squares taps (in 1/64) of the linear prediction of each non-zero weight from
    its causal neighbours (see ``_neighbours``); the encoder stores them in the header."""
    qbook = quantised_codebook(codebook, codebook.size)
    features, targets = _predictor_features(levels.astype(np.int32), flags.astype(np.int8), qbook, negatives, rows,
                                            levels.size // rows, kernel)  # fmt: skip
    if targets.size == 0:
        return [0] * PREDICTOR_TAPS
    solution, *_ = np.linalg.lstsq(features.astype(np.float64), targets.astype(np.float64), rcond=None)
    return [int(c) for c in np.clip(np.rint(solution * _COEFFICIENT_ONE), -COEFFICIENT_LIMIT, COEFFICIENT_LIMIT)]


def _predictor_arrays(codebook, coefficients, size):
    taps = np.zeros(PREDICTOR_TAPS, dtype=np.int64)
    if coefficients is not None:
        taps[:] = coefficients
    return quantised_codebook(codebook, size), taps


def encode_codes(levels: np.ndarray, flags: np.ndarray, rows: int, kernel: int, negatives: int, positives: int, model: int,
                 codebook: np.ndarray | None = None, coefficients: list[int] | None = None) -> bytes:  # fmt: skip
    """``codebook`` and ``coefficients`` (``fit_predictor``) feed the predictor of model bit 32."""
    inner = levels.size // rows
    capacity = 64 + 2 * int(flags.sum())
    qbook, taps = _predictor_arrays(codebook, coefficients, negatives + positives)
    return _run_encoder(_code_levels, capacity, levels.astype(np.int32), flags.astype(np.int8), rows, inner, kernel,
                        negatives, positives, model, qbook, taps)  # fmt: skip


def decode_codes(data: bytes, flags: np.ndarray, rows: int, kernel: int, negatives: int, positives: int, model: int,
                 codebook: np.ndarray | None = None, coefficients: list[int] | None = None) -> np.ndarray | None:  # fmt: skip
    buf = np.frombuffer(data, dtype=np.uint8).copy()  # writable: one kernel body encodes and decodes
    inner = flags.size // rows
    levels = np.zeros(flags.size, dtype=np.int32)
    qbook, taps = _predictor_arrays(codebook, coefficients, negatives + positives)
    status = _code_levels(True, _new_state(True, buf), buf, levels, flags, rows, inner, kernel, negatives, positives, model,
                          qbook, taps)  # fmt: skip
    return None if status else levels
