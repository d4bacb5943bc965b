"""How a prompt is cut into prefix blocks, and the compact set of blocks a replica holds: the
contract between the router (which routes by them) and each pod's gateway (which sees every
request its engine prefills, whichever router sent it, and reports what it holds).

A block is ``block_chars`` characters of the prompt text (chat messages rendered as the gateway
and the router both render them), or ``block_chars // 4`` ids of a prompt given as token ids.
Block ``i``'s hash covers blocks ``0..i`` (a chain), so equal hashes at equal depth mean an equal
prefix, as in the engine's own prefix cache, and membership is monotone along a chain.

``BlockSketch`` is a Bloom filter of chain hashes: a few bits per block, no false negatives, a
false positive rate set by its size (about 1% at 10 bits and 7 probes per block). Routers that
read the same replica's sketch agree on what it holds without talking to each other.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Container, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_SEED = b"goodput-prefix-v1"
DEFAULT_BLOCK_CHARS = 64
BITS_PER_BLOCK = 10
PROBES = 7


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


def tokens_per_block(
    prompt_tokens: float, text: str, token_ids: Sequence[int], block_chars: int
) -> float:
    """The prompt tokens one block covers: ``block_chars // 4`` ids of an id prompt; else the
    prompt's tokens over its characters, times a block's characters."""
    if token_ids:
        return float(max(1, block_chars // 4))
    return prompt_tokens * min(1.0, block_chars / max(1, len(text)))


def uncached_tokens(prompt_tokens: float, matched_blocks: int, per_block: float) -> float:
    """The prompt tokens past ``matched_blocks`` held blocks: what an engine still prefills."""
    return max(0.0, prompt_tokens - matched_blocks * per_block)


def held_prefix(chain: Sequence[int], held: Container[int]) -> int:
    """How many leading blocks of ``chain`` are in ``held``. Binary search: a chain's block is
    only ever held with all those before it (they are sent together and leave deepest first)."""
    lo, hi = 0, len(chain)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if chain[mid - 1] in held:
            lo = mid
        else:
            hi = mid - 1
    return lo


def prompt_token_ids(endpoint: str, body: Mapping[str, Any]) -> list[int]:
    """A completions prompt given as one list of token ids; empty otherwise (text is hashed)."""
    prompt = body.get("prompt") if endpoint == "completions" else None
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return prompt
    return []


class SketchReport(BaseModel):
    """A replica's held blocks as its gateway reports them (``LoadReport.prefix_sketch``)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    block_chars: int = Field(gt=0, alias="blockChars", description="The blocks' size.")
    probes: int = Field(gt=0, le=32, description="Bits set per block.")
    bits: str = Field(description="The filter, base64; its length in bits is the modulus.")
    blocks: int = Field(ge=0, description="Blocks in the filter.")
    version: int = Field(ge=0, description="Changes whenever the set does.")


class BlockSketch:
    """A Bloom filter over chain hashes, built by the gateway and read by routers."""

    def __init__(self, size_bits: int, probes: int = PROBES) -> None:
        self.size_bits = max(64, size_bits - size_bits % 8)
        self.probes = probes
        self.bits = bytearray(self.size_bits // 8)

    @classmethod
    def of(cls, hashes: Sequence[int], probes: int = PROBES) -> BlockSketch:
        sketch = cls(BITS_PER_BLOCK * max(len(hashes), 64), probes)
        for h in hashes:
            sketch.add(h)
        return sketch

    @classmethod
    def decode(cls, report: SketchReport) -> BlockSketch:
        raw = base64.b64decode(report.bits)
        sketch = cls(8 * len(raw), report.probes)
        sketch.bits[:] = raw[: sketch.size_bits // 8]
        return sketch

    def encode(self) -> str:
        return base64.b64encode(self.bits).decode()

    def _positions(self, h: int) -> list[int]:
        # Double hashing from the 64-bit chain hash itself: it is already uniformly random.
        low, high = h & 0xFFFFFFFF, (h >> 32) | 1
        return [(low + i * high) % self.size_bits for i in range(self.probes)]

    def add(self, h: int) -> None:
        for p in self._positions(h):
            self.bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, h: object) -> bool:
        if not isinstance(h, int):
            return False
        bits = self.bits
        return all(bits[p >> 3] & (1 << (p & 7)) for p in self._positions(h))

    def matched_blocks(self, chain: Sequence[int]) -> int:
        """How many leading blocks of ``chain`` are in the set."""
        return held_prefix(chain, self)
