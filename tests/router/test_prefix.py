"""Prefix blocks, the per-replica index, and the block sketch gateways report."""

from __future__ import annotations

from goodput.api.prefix_blocks import BlockSketch, SketchReport, block_hashes
from goodput.router.prefix import PrefixIndex, rendezvous_rank
from goodput.serving.held_blocks import HeldBlocks


def test_equal_prefixes_hash_alike_and_diverge_where_the_text_does() -> None:
    a = block_hashes("system: be brief\nuser: " + "x" * 200, [], 16)
    b = block_hashes("system: be brief\nuser: " + "x" * 100 + "y" * 100, [], 16)
    assert len(a) == len(b) == (23 + 200) // 16
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
    assert shared == (23 + 100) // 16  # the first block holding a 'y'


def test_a_partial_trailing_block_is_left_out_and_token_ids_are_blocked_too() -> None:
    assert block_hashes("x" * 15, [], 16) == ()
    assert len(block_hashes("", list(range(40)), 64)) == 2  # 16 ids a block


def test_the_index_matches_the_longest_held_prefix() -> None:
    index = PrefixIndex(capacity=100)
    chain = block_hashes("a" * 160, [], 16)
    index.record("r1", chain[:6])
    assert index.matched_blocks("r1", chain) == 6
    assert index.matched_blocks("r2", chain) == 0
    other = block_hashes("b" * 160, [], 16)
    assert index.matched_blocks("r1", other) == 0


def test_eviction_keeps_what_remains_a_prefix() -> None:
    index = PrefixIndex(capacity=8)
    old = block_hashes("o" * 160, [], 16)  # 10 blocks, over capacity alone
    index.record("r", old)
    assert index.matched_blocks("r", old) == 8  # the deepest two went first
    new = block_hashes("n" * 96, [], 16)
    index.record("r", new)
    assert index.matched_blocks("r", new) == 6
    assert index.matched_blocks("r", old) == 2


def test_rendezvous_is_stable_and_moves_only_the_keys_of_a_leaving_replica() -> None:
    names = ["a", "b", "c"]
    homes = {k: rendezvous_rank(k, names)[0] for k in range(300)}
    assert set(homes.values()) == set(names)
    assert homes == {k: rendezvous_rank(k, list(reversed(names)))[0] for k in range(300)}
    after = {k: rendezvous_rank(k, ["a", "b"])[0] for k in range(300)}
    moved = {k for k in homes if homes[k] != after[k]}
    assert moved == {k for k in homes if homes[k] == "c"}


def test_a_block_sketch_never_misses_a_held_block_and_rarely_invents_one() -> None:
    held = [block_hashes(f"prompt {i} " + "z" * 300, [], 16) for i in range(100)]
    hashes = [h for chain in held for h in chain]
    sketch = BlockSketch.of(hashes)
    assert all(h in sketch for h in hashes)
    assert sketch.matched_blocks(held[7]) == len(held[7])
    strangers = [h for i in range(200) for h in block_hashes(f"other {i} " + "q" * 300, [], 16)]
    false = sum(h in sketch for h in strangers) / len(strangers)
    assert false < 0.03, false  # ~1% at 10 bits and 7 probes a block
    # What the gateway sends is what the router reads.
    report = SketchReport(
        block_chars=16, probes=sketch.probes, bits=sketch.encode(), blocks=len(hashes), version=3
    )
    again = BlockSketch.decode(
        SketchReport.model_validate_json(report.model_dump_json(by_alias=True))
    )
    assert again.bits == sketch.bits and again.matched_blocks(held[7]) == len(held[7])


def test_held_blocks_keep_the_engine_s_share_and_report_versions() -> None:
    held = HeldBlocks(block_chars=16, capacity_blocks=lambda: 30)
    held.record("a" * 320, [])  # 20 blocks
    held.record("b" * 320, [])  # 20 more: the deepest of a's leave first
    a, b = block_hashes("a" * 320, [], 16), block_hashes("b" * 320, [], 16)
    assert len(held) == 30
    report = held.report()
    sketch = BlockSketch.decode(report)
    assert sketch.matched_blocks(b) == 20
    assert 10 <= sketch.matched_blocks(a) <= 11  # its first ten remain (one stale positive at most)
    assert held.report(unchanged=True).bits == "" and report.version == 2
    held.record("", list(range(64)))  # token ids: blocks of 4 ids
    assert held.version == 3


def test_the_gateway_prices_a_prompt_by_what_its_engine_would_still_prefill() -> None:
    held = HeldBlocks(block_chars=16, capacity_blocks=lambda: 1000)
    context = "c" * 320  # 20 blocks
    assert held.uncached_tokens(context + "q" * 40, [], 90) == 90  # nothing sent there yet
    held.record(context + "first question", [])
    # 360 characters, 90 tokens: 20 of its 22 whole blocks held, 4 tokens a block.
    assert held.uncached_tokens(context + "q" * 40, [], 90) == 90 - 20 * 4
    assert held.uncached_tokens("", list(range(64)), 64) == 64
    held.record("", list(range(64)))
    assert held.uncached_tokens("", [*range(64), 7, 7, 7, 7], 68) == 4
