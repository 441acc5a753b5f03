"""The scheduler looks at its peers' restarts every WATCH_PERIOD, not at every short pause
between two exchanges whose roots were equal (a look costs O(ring nodes): in a simulated
100-node cluster it was a fifth of the CPU). Run on kvnet.sim's clock and network."""
from kvnet.antientropy import service as S
from kvnet.sim.cluster import SimCluster
from kvnet.sim.loop import determinism, inline_pools, quiet


def test_peers_are_looked_at_once_a_watch_period(tmp_path):
    c = SimCluster(str(tmp_path), size=4, seed=1, ae_interval_ms=1000)
    looks = {}

    async def main():
        await c.start()
        for name, node in c.nodes.items():
            ae = node.antientropy
            watch = ae._watch_peers

            def counted(watch=watch, name=name):
                looks[name] = looks.get(name, 0) + 1
                return watch()
            ae._watch_peers = counted
        await c.sleep(20.0)
        equal = {name: n.antientropy.stats["exchanges_equal"] for name, n in c.nodes.items()}
        await c.stop()
        return equal

    with determinism(1, c.loop.time), quiet(), inline_pools():
        equal = c.run(main())
    # equal roots: exchanges every EQUAL_PAUSE for a round of the node's partitions, each
    # followed by a pause; the peers were looked at far fewer times
    assert all(equal[name] > 2 * looks[name] for name in looks), (equal, looks)
    assert looks and all(n <= 2 * 20.0 / S.WATCH_PERIOD + 2 for n in looks.values()), looks
    assert all(n >= 20.0 / S.WATCH_PERIOD / 2 for n in looks.values()), looks


def test_a_look_asks_only_about_the_peers_it_shares_a_partition_with(tmp_path):
    """A catch-up with a member that shares no partition has nothing to exchange: a look
    over 12 members asks about the few that share one, and a restart of one of those still
    queues a catch-up."""
    c = SimCluster(str(tmp_path), size=20, ring_size=64, seed=1, ae_interval_ms=1000)

    async def main():
        await c.start()
        node = c.nodes["n0"]
        ring, ae = node.ring, node.antientropy
        sharing = {n for p in range(ring.q) if "n0" in ring.preference_list(p)
                   for n in ring.preference_list(p)} - {"n0"}
        asked = []
        is_up = node.is_up

        def counted(peer):
            asked.append(peer)
            return is_up(peer)
        node.is_up = counted
        ae._watch_peers()
        node.is_up = is_up
        peer = sorted(sharing)[0]
        await c.restart(peer)
        await c.sleep(3.0)
        queued = ae.stats["exchanges"]
        await c.stop()
        return sharing, asked, queued

    with determinism(1, c.loop.time), quiet(), inline_pools():
        sharing, asked, exchanges = c.run(main())
    assert 0 < len(sharing) < 19
    assert sorted(asked) == sorted(sharing)
    assert exchanges > 0
