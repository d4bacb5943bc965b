"""Prefix blocks and the per-replica index."""

from __future__ import annotations

from goodput.router.prefix import PrefixIndex, block_hashes, rendezvous_rank


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
