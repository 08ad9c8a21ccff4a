"""Content hashes and derived seeds (used by the readers, the model loader and the run store).

Every hash is BLAKE2b (RFC 7693) over an unambiguous byte encoding of the content, so the
same content gives the same hex digest on every machine, and any change of a value, a
dtype, a shape or a name gives another one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

import numpy as np

#: digest bytes of a per-image hash (64 bits, 16 hex digits)
IMAGE_HASH_BYTES = 8
#: digest bytes of a weights or unit hash (128 bits, 32 hex digits)
HASH_BYTES = 16


def hash_bytes(parts: Iterable[bytes], digest_size: int = HASH_BYTES) -> str:
    """BLAKE2b hex digest of ``parts``, each prefixed by its length (so no two splits collide)."""
    h = hashlib.blake2b(digest_size=digest_size)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def hash_json(obj: Any, digest_size: int = HASH_BYTES) -> str:
    """Hash of ``obj`` as canonical JSON (sorted keys, no spaces; other objects as ``str``)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hash_bytes([text.encode()], digest_size)


def array_hash(arr: np.ndarray, digest_size: int = IMAGE_HASH_BYTES) -> str:
    """Hash of an array's dtype, shape and bytes (C order)."""
    a = np.ascontiguousarray(arr)
    return hash_bytes([a.dtype.str.encode(), repr(a.shape).encode(), a.tobytes()], digest_size)


def tensor_bytes(t) -> bytes:
    """The raw bytes of a tensor in C order (any dtype, including bfloat16), read on the CPU."""
    import torch

    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_quantized:
        t = t.int_repr()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def state_dict_hash(state: Mapping[str, Any]) -> str:
    """Hash of a state dict: for every entry in sorted key order, its key, dtype, shape and bytes.

    One pass over the weights. Entries that are not tensors (rare ``extra_state``) enter as
    their ``repr``.
    """
    import torch

    parts: list[bytes] = []
    for key in sorted(state):
        value = state[key]
        parts.append(key.encode())
        if isinstance(value, torch.Tensor):
            parts += [str(value.dtype).encode(), repr(tuple(value.shape)).encode(), tensor_bytes(value)]
        else:
            parts.append(repr(value).encode())
    return hash_bytes(parts)


def derive_seed(seed: int, name: str) -> int:
    """A seed in ``[0, 2**63)`` derived from a base seed and a name: the first 8 bytes of
    BLAKE2b(``"<seed>\\0<name>"``). Different names give independent seeds, the same pair
    always the same one."""
    digest = hashlib.blake2b(f"{int(seed)}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def short(h: str | None, n: int = 8) -> str:
    """The first ``n`` hex digits of a hash, for messages (``-`` for none)."""
    return "-" if not h else f"{h[:n]}…"
