"""What each replica is believed to hold of the prompts' prefixes (cut into chained blocks by
``goodput.api.prefix_blocks``), and rendezvous hashing.

``PrefixIndex`` remembers, per replica, the chains this router sent there — an approximation of
the engine's cache (it cannot see evictions; its capacity bounds the error). The replicas' own
gateways report what they were sent by every router (``LoadReport.prefix_sketch``), which the
stages join to it (``stages.PrefixKnowledge``).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from goodput.api.prefix_blocks import held_prefix


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
        return held_prefix(chain, held) if held else 0

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
