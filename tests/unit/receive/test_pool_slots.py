"""The receiver processes' shared association limit and accept balance (node/receive/pool.py)."""

from __future__ import annotations

import multiprocessing

from node.receive.pool import SharedSlots

CTX = multiprocessing.get_context("spawn")


def test_the_association_limit_counts_every_receiver_and_frees_a_slot_on_release() -> None:
    counts, conns = CTX.Array("i", 3), CTX.Array("i", 3)
    a, b, c = (SharedSlots(counts, conns, i) for i in range(3))
    assert a.claim(3) and b.claim(3) and c.claim(3)
    assert not a.claim(3) and not b.claim(3)  # the limit is for all of them together
    b.release()
    assert c.claim(3)
    assert counts[:] == [1, 0, 2]
    b.release()  # more releases than claims never go below zero
    assert counts[1] == 0


def test_the_receiver_holding_the_fewest_connections_takes_the_next_one() -> None:
    counts, conns = CTX.Array("i", 2), CTX.Array("i", 2)
    a, b = SharedSlots(counts, conns, 0), SharedSlots(counts, conns, 1)
    assert a.my_turn() and b.my_turn()  # a tie: whoever is first
    a.opened()
    assert not a.my_turn() and b.my_turn()
    b.opened()
    b.opened()
    assert a.my_turn() and not b.my_turn()
    b.closed()
    b.closed()
    assert not a.my_turn() and b.my_turn()
