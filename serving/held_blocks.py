"""The prompt blocks this pod's engine most likely holds in its prefix cache, as the gateway
reports them to the cluster routers (``LoadReport.prefix_sketch``).

The gateway sees every prompt its engine prefills, whichever router sent it, so what it reports
is the same for every router: two routers reading it agree on where a prefix lives without
talking to each other, which their own indexes (each knowing only its own traffic) cannot do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from goodput.api.prefix_blocks import (
    BITS_PER_BLOCK,
    PROBES,
    BlockSketch,
    SketchReport,
    block_hashes,
    held_prefix,
    tokens_per_block,
    uncached_tokens,
)

# Evictions leave their bits set (a Bloom filter cannot forget); the filter is rebuilt once they
# reach this share of its blocks, which bounds the stale positives they add.
_REBUILD_SHARE = 0.1
DEFAULT_CAPACITY_BLOCKS = 4096


class HeldBlocks:
    """Chain hashes of the prompts dispatched to the engine, most recently used last, at most
    the engine's KV capacity in blocks (``capacity_blocks``, read each time: it is learned from
    the engine after start-up). The engine evicts its cached blocks least recently used first;
    so does this set, so what it keeps approximates what the engine keeps."""

    def __init__(self, block_chars: int, capacity_blocks: Callable[[], int]) -> None:
        self.block_chars = block_chars
        self.capacity_blocks = capacity_blocks
        self._held: OrderedDict[int, None] = OrderedDict()
        self._sketch: BlockSketch | None = None
        self._evicted = 0
        self.version = 0

    def uncached_tokens(self, text: str, token_ids: Sequence[int], prompt_tokens: float) -> float:
        """The prompt tokens the engine would still prefill: those past the longest prefix of
        the prompt's blocks in the set (the exact set here, not the reported filter)."""
        chain = block_hashes(text, token_ids, self.block_chars)
        matched = held_prefix(chain, self._held) if chain else 0
        per_block = tokens_per_block(prompt_tokens, text, token_ids, self.block_chars)
        return uncached_tokens(prompt_tokens, matched, per_block)

    def record(self, text: str, token_ids: Sequence[int]) -> None:
        chain = block_hashes(text, token_ids, self.block_chars)
        if not chain:
            return
        # Deepest first, so that a chain's leading blocks are the most recently used and leave
        # last: what remains of a chain is always a prefix of it.
        for h in reversed(chain):
            self._held[h] = None
            self._held.move_to_end(h)
            if self._sketch is not None:
                self._sketch.add(h)
        capacity = max(1, self.capacity_blocks())
        while len(self._held) > capacity:
            self._held.popitem(last=False)
            self._evicted += 1
        self.version += 1

    def __len__(self) -> int:
        return len(self._held)

    def report(self, *, unchanged: bool = False) -> SketchReport:
        """The set as a Bloom filter; without its bits when ``unchanged`` (the caller holds
        this version)."""
        if unchanged:
            return SketchReport(
                block_chars=self.block_chars, probes=PROBES, bits="", blocks=len(self._held),
                version=self.version,
            )  # fmt: skip
        capacity = max(1, self.capacity_blocks())
        sketch = self._sketch
        if (
            sketch is None
            or self._evicted > _REBUILD_SHARE * capacity
            or sketch.size_bits < BITS_PER_BLOCK * capacity // 2
        ):
            sketch = self._sketch = BlockSketch(BITS_PER_BLOCK * capacity)
            for h in self._held:
                sketch.add(h)
            self._evicted = 0
        return SketchReport(
            block_chars=self.block_chars,
            probes=sketch.probes,
            bits=sketch.encode(),
            blocks=len(self._held),
            version=self.version,
        )
