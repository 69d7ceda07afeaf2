"""Compressed messages: each tensor a node sends, packed smaller, and unpacked on arrival.

``exchange.compress`` chooses the codec, tensor by tensor:

- ``fp16``: IEEE half precision (2 bytes a value; relative error <= 2^-11 in its range).
- ``bf16``: the top 16 bits of the float32, rounded to nearest even (2 bytes; relative
  error <= 2^-8, float32's range).
- ``int8``: absmax quantization, one float32 scale per row (``block`` 0) or per ``block``
  consecutive values: q = round(127 x / max|x|), error <= max|x| / 254 per value.
- ``topk``: the ``fraction`` largest-magnitude values and their int32 positions; the rest
  are sent as zeros.

A packed tensor is a :class:`Packed`, whose ``nbytes`` is what travels, so an adapter of
packed tensors reports its compressed size wherever the engine counts bytes.

Error feedback (``exchange.error_feedback``) is CHOCO-gossip (Koloskova et al., 2019): each
node i keeps a public copy x^_i of its state, which every neighbour also holds, and sends only
the packed difference q = C(x_i - x^_i); all holders then add q to x^_i. Mixing uses the
public copies and corrects the node's exact state: x_i <- x_i + gamma (sum_j W_ij x^_j -
x^_i). As the states agree, the differences shrink, so the compression error vanishes too
(plain gossip of packed states stalls instead). Receivers are simulated without state of
their own: the sender sends x^_i itself as a ``public`` Packed whose ``nbytes`` is that of q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CODECS = ("none", "fp16", "bf16", "int8", "topk")


@dataclass(frozen=True)
class Packed:
    """One tensor as sent: the codec, its shape and dtype, and the arrays that travel."""

    codec: str
    shape: tuple[int, ...]
    dtype: str
    payload: tuple[np.ndarray, ...]
    wire: int | None = None  # "public": the bytes of the packed difference that travelled

    @property
    def nbytes(self) -> int:
        return self.wire if self.wire is not None else sum(a.nbytes for a in self.payload)


def pack(x: np.ndarray, codec: str, fraction: float = 0.1, block: int = 0) -> Packed:
    """``x`` packed with ``codec`` (see the module's notes)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if codec == "fp16":
        payload: tuple[np.ndarray, ...] = (x32.astype(np.float16),)
    elif codec == "bf16":
        bits = x32.view(np.uint32).astype(np.uint64)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest, ties to even
        payload = ((rounded >> 16).astype(np.uint16),)
    elif codec == "int8":
        rows = _rows(x32, block)
        scale = np.abs(rows).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
        payload = (q, scale.astype(np.float32))
    elif codec == "topk":
        flat = x32.reshape(-1)
        k = min(flat.size, max(1, math.ceil(fraction * flat.size)))
        idx = np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :].astype(np.int32)
        idx.sort()
        payload = (idx, flat[idx])
    else:
        raise ValueError(f"unknown codec {codec!r}; choose one of {CODECS[1:]}")
    return Packed(codec, tuple(x.shape), str(x.dtype), payload)


def unpack(p: Packed) -> np.ndarray:
    """The tensor a :class:`Packed` stands for, in its original dtype."""
    n = math.prod(p.shape)
    if p.codec == "public":
        return p.payload[0]
    if p.codec == "fp16":
        out = p.payload[0].astype(np.float32)
    elif p.codec == "bf16":
        out = (p.payload[0].astype(np.uint32) << 16).view(np.float32)
    elif p.codec == "int8":
        q, scale = p.payload
        out = (q.astype(np.float32) * scale[:, None]).reshape(-1)[:n]
    else:  # topk
        idx, values = p.payload
        out = np.zeros(n, dtype=np.float32)
        out[idx] = values
    return out.reshape(p.shape).astype(p.dtype, copy=False)


def public_step(
    x: np.ndarray, public: np.ndarray, codec: str, fraction: float = 0.1, block: int = 0
) -> tuple[Packed, np.ndarray]:
    """One CHOCO send: the packed difference updates the public copy; returns what the
    receivers hold (a ``public`` Packed of the new copy, sized as the difference) and the
    new copy."""
    q = pack(np.asarray(x, dtype=np.float32) - public, codec, fraction, block)
    new = public + unpack(q).astype(np.float32)
    return Packed("public", tuple(x.shape), "float32", (new,), wire=q.nbytes), new


def _rows(x: np.ndarray, block: int) -> np.ndarray:
    """``x`` as rows sharing one scale: its own rows (block 0), or blocks of ``block``
    consecutive values (the last one zero-padded)."""
    if block <= 0:
        return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)
    flat = x.reshape(-1)
    pad = (-flat.size) % block
    return np.concatenate([flat, np.zeros(pad, dtype=flat.dtype)]).reshape(-1, block)
