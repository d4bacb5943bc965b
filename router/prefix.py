"""Prompt prefixes as chains of block hashes, and what each replica is believed to hold.

A prompt is cut into fixed-size blocks (``PrefixConfig``); block ``i``'s hash covers blocks
``0..i`` (a chain), so equal hashes at equal depth mean an equal prefix, as in the engine's own
prefix cache. ``PrefixIndex`` remembers, per replica, the chains this router sent there — an
approximation of the engine's cache (it cannot see evictions; its capacity bounds the error).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

_SEED = b"goodput-prefix-v1"


def block_hashes(text: str, token_ids: Sequence[int], block_chars: int) -> tuple[int, ...]:
    """Chained 64-bit hashes of the prompt's whole blocks (a trailing partial block is left out,
    as the engine caches whole blocks only). ``token_ids`` (a completions prompt given as ids)
    are cut into blocks of ``block_chars // 4`` ids instead."""
    if token_ids:
        size = max(1, block_chars // 4)
        pieces = [
            b",".join(str(t).encode() for t in token_ids[i : i + size])
            for i in range(0, len(token_ids) - size + 1, size)
        ]
    else:
        raw = text.encode("utf-8", errors="surrogatepass")
        pieces = [
            raw[i : i + block_chars] for i in range(0, len(raw) - block_chars + 1, block_chars)
        ]
    chain: list[int] = []
    parent = _SEED
    for piece in pieces:
        digest = hashlib.blake2b(piece, digest_size=8, key=parent[:64]).digest()
        chain.append(int.from_bytes(digest, "big"))
        parent = digest
    return tuple(chain)


def rendezvous_rank(key: int, names: Sequence[str]) -> list[str]:
    """``names`` ordered by highest random weight for ``key``: every router computes the same
    order without sharing state, and removing one name moves only the keys it held."""
    k = key.to_bytes(8, "big")

    def weight(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8, key=k).digest(), "big")

    return sorted(names, key=weight, reverse=True)


class PrefixIndex:
    """Per replica, the block hashes recently sent there (LRU, ``capacity`` per replica)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._held: dict[str, OrderedDict[int, None]] = {}

    def matched_blocks(self, endpoint: str, chain: Sequence[int]) -> int:
        """How many leading blocks of ``chain`` ``endpoint`` is believed to hold."""
        held = self._held.get(endpoint)
        if not held:
            return 0
        # Chains make membership monotone: if block i is held, so were 0..i-1 when it was sent.
        lo, hi = 0, len(chain)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if chain[mid - 1] in held:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def record(self, endpoint: str, chain: Sequence[int]) -> None:
        held = self._held.setdefault(endpoint, OrderedDict())
        # Deepest first, so that a chain's leading blocks are the most recently used and leave
        # last: what remains of a chain is always a prefix of it (the engine evicts the same way).
        for h in reversed(chain):
            held[h] = None
            held.move_to_end(h)
        while len(held) > self.capacity:
            held.popitem(last=False)

    def forget(self, endpoint: str) -> None:
        self._held.pop(endpoint, None)
