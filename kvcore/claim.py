"""Claim: which node owns which partition after a join or a leave (docs/ring.md).

Pure Python and not hot: it runs once per membership change, on the claimant (the initial
layout, which every node of a new cluster computes for itself, is remembered for its input:
a process running many nodes, as the simulator does, computes it once). It keeps the
properties of docs/algorithms.md, section 3 (balance, spacing with wrap-around, minimal
movement), in the spirit of riak_core's claim modules.

Zones: when members carry zone labels and the zones allow it (`zone_labels`), spacing is asked
of zones instead of nodes (no window of n partitions repeats a zone, which implies it of nodes),
so a preference list is n consecutive owners in n zones and every node's replica load follows
its ownership (kvcore/zones.py decides when). The functions below take that label map as
`lab` (node -> label); None means each node is its own label, the behaviour without zones,
unchanged. A join or leave that cannot keep the zones spaced with minimal moves keeps the node
spacing instead (minimal moves first); the ring's walk still puts replicas in distinct zones
first (docs/ring.md).
"""
import functools
import itertools
import random
from collections import Counter, namedtuple

from kvcore.errors import RingError
from kvcore.zones import (conflicts as _conflicts, fewest as _fewest, members_of,  # noqa: F401
                          near_label as _near_label, soft_labels as _soft, tight, zone_extras,
                          zone_key, zone_labels)

#: owners: tuple of node ids, one per partition; fallback: True when the minimal-movement claim
#: found no valid choice and the ring was re-striped (its extra moves show in claim_sim).
Claim = namedtuple("Claim", "owners fallback")

_RETRIES = 24
_DFS_BUDGET = 200_000
_GREEDY_MAX_Q = 2048


def balance_bounds(q, s):
    """(floor, ceil) of Q/S: what each node must own."""
    return q // s, -(-q // s)


def spacing_possible(q, s, n):
    """Whether S > n nodes can own Q partitions with no window of n repeating an owner: a node
    owning ceil(Q/S) partitions needs n partitions of room for each."""
    return s > n and -(-q // s) * n <= q


def violations(owners, n, lab=None):
    """Start indices of the windows of min(n, Q) consecutive partitions, wrap-around included,
    whose owners (their labels, with `lab`) are not distinct."""
    q = len(owners)
    w = min(n, q)
    if lab is not None:
        owners = [lab.get(x, x) for x in owners]
    return [i for i in range(q) if len({owners[(i + j) % q] for j in range(w)}) < w]


def check(owners, nodes, n, lab=None):
    """Property problems of an owner table as readable strings; [] when it is valid.

    Balance: each node floor or ceil of Q/S. Spacing: no window of n repeats an owner when S > n;
    when S = n only the n - 1 windows that start in the last n - 1 partitions (the wrap) may; when
    S < n no window can hold n distinct owners and spacing is not asked for (nor when Q is too
    small for it: see spacing_possible). With `lab` (zone_labels) spacing is asked of the labels
    (zones), with the same wrap rule when there are exactly n of them.
    """
    q, s = len(owners), len(nodes)
    problems = []
    if set(owners) - set(nodes):
        problems.append(f"owners not members: {sorted(set(owners) - set(nodes))}")
    lo, hi = balance_bounds(q, s)
    counts = Counter(owners)
    bad = {x: counts.get(x, 0) for x in nodes if not lo <= counts.get(x, 0) <= hi}
    if bad:
        problems.append(f"unbalanced (want {lo}..{hi}): {bad}")
    if lab is not None:
        bad_windows = violations(owners, n, lab)
        if tight(lab, n):
            # only the wrap may repeat a zone, and never a node
            away = [i for i in bad_windows if i < q - (n - 1)] + violations(owners, n)
        else:
            away = bad_windows
        if away:
            problems.append(f"zone spacing violations at windows {sorted(set(away))[:8]}")
    elif s == n or spacing_possible(q, s, n):
        bad_windows = violations(owners, n)
        away = [i for i in bad_windows if s > n or i < q - (n - 1)]
        if away:
            problems.append(f"spacing violations at windows {away[:8]}")
    return problems


def diff(old, new):
    """Ownership transfers from ring old to ring new: [(partition, from_node, to_node)]."""
    if old.q != new.q:
        raise RingError(f"cannot diff rings of {old.q} and {new.q} partitions")
    return [(p, a, b) for p, (a, b) in enumerate(zip(old.owners, new.owners)) if a != b]


# -- whole-ring layouts ------------------------------------------------------------------------

def initial(nodes, q, n):
    """Owner table for a new cluster of `nodes` (sorted ids): the first n + 1 striped, the rest
    joined one by one. A plain striping of all S nodes would be valid too, but its regularity
    makes later leaves expensive (every gap a leaver leaves has the same blocked neighbours).
    A pure function of its input (join's randomness is seeded by it), so its results are
    remembered per (nodes, q, n): a tuple, never changed by its callers.

    `nodes` may hold (id, zone) pairs: when zone_labels asks zone spacing of them the layout
    is a zone-spaced fill (restripe with the labels); else the zones change nothing."""
    nodes = tuple(nodes)
    if any(not isinstance(x, str) for x in nodes):
        pairs = tuple((x, None) if isinstance(x, str) else tuple(x) for x in nodes)
        if zone_labels(pairs, q, n) is not None:
            return _initial_zoned(pairs, q, n)
        nodes = tuple(x for x, _ in pairs)
    return _initial(nodes, q, n)


@functools.lru_cache(maxsize=32, typed=True)
def _initial_zoned(pairs, q, n):
    lab = zone_labels(pairs, q, n)
    return tuple(restripe(None, sorted(x for x, _ in pairs), q, n, lab))


@functools.lru_cache(maxsize=32, typed=True)
def _initial(nodes, q, n):
    nodes = list(nodes)
    if not nodes:
        raise RingError("a ring needs at least one node")
    if len(nodes) > q:
        raise RingError(f"{len(nodes)} nodes cannot share {q} partitions (each must own at least one)")
    k = min(len(nodes), n + 1) if spacing_possible(q, min(len(nodes), n + 1), n) else len(nodes)
    owners = restripe(None, nodes[:k], q, n)
    for i in range(k, len(nodes)):
        owners = join(_Table(owners, n, nodes[:i]), nodes[i]).owners
    return tuple(owners)


class _Table:
    """The three things claim reads from a ring."""

    def __init__(self, owners, n, nodes):
        self.owners, self.n, self.q, self.nodes = tuple(owners), n, len(owners), tuple(nodes)


def restripe(owners, nodes, q, n, lab=None):
    """A valid layout for `nodes`, keeping as many current `owners` as it finds a way to.

    S <= n: the plain stripe p -> nodes[p % S] under the permutation that keeps most owners.
    S > n: a depth-first fill that prefers the current owner, else the node with most quota left
    (round-robin among equals); the last n - 1 partitions are checked against the first (the tail
    fix-up, where Riak's old claim left "tail violations").
    With `lab` (zone_labels): Z = n zones are striped (zone_stripe), more are filled with the
    labels spaced; if that finds no layout, the layout without labels.
    """
    nodes = list(nodes)
    s = len(nodes)
    if s == 0:
        raise RingError("a ring needs at least one node")
    if s > q:
        raise RingError(f"{s} nodes cannot share {q} partitions (each must own at least one)")
    if lab is not None:
        if tight(lab, n):
            got = zone_stripe(owners, nodes, q, n, lab)
        else:
            got = (_fill(owners, nodes, q, n, lab) if owners is not None else None) \
                or _fill(None, nodes, q, n, lab)
        if got is not None and not check(got, nodes, n, lab):
            return got
    if s <= n:
        return _best_stripe(owners, nodes, q)
    if not spacing_possible(q, s, n):  # Q too small for the spacing: balanced, best effort
        return _best_stripe(owners, nodes, q)
    if owners is not None:
        got = _fill(owners, nodes, q, n)
        if got is not None:
            return got
    got = _fill(None, nodes, q, n)
    # None: spacing_possible is necessary, not sufficient (Q=64, S=7, n=6 has no layout); seen
    # only for n >= 6 with Q <= 128. Balanced, best-effort spacing then.
    return got if got is not None else _best_stripe(owners, nodes, q)


def zone_stripe(owners, nodes, q, n, lab):
    """Z = n zones of k >= 2 nodes each: partition p goes to zone p mod Z (the permutation that
    keeps most current `owners`' zones). Within a zone any balanced assignment is node-spaced
    (its partitions are n apart), so each keeps its current owner where that node has quota
    left and the rest go in a seeded random order: a regular alternation would leave a later
    leave no node to give a partition to (its neighbours covering every other node). Where a
    zone's last partition and its first meet across the wrap their nodes differ. None when the
    labels are not that shape."""
    zones = sorted(set(lab[x] for x in nodes), key=repr)
    by_zone = {z: sorted(x for x in nodes if lab[x] == z) for z in zones}
    sizes = {len(v) for v in by_zone.values()}
    if len(zones) != n or len(sizes) != 1 or sizes.pop() < 2:
        return None
    zone_owners = None if owners is None else [lab.get(x) for x in owners]
    zone_at = _best_stripe(zone_owners, zones, q)
    rng = random.Random(f"{q}/{n}/{','.join(sorted(nodes))}")
    out = [None] * q
    for z in zones:
        places = [p for p in range(q) if zone_at[p] == z]
        mine, k = by_zone[z], len(by_zone[z])
        c = len(places)
        quota = {x: c // k + (i < c % k) for i, x in enumerate(mine)}
        got = [None] * c
        if owners is not None:
            for i, p in enumerate(places):
                x = owners[p]
                if x in quota and quota[x] > 0:
                    got[i] = x
                    quota[x] -= 1
        rest = [x for x in mine for _ in range(quota[x])]
        rng.shuffle(rest)
        it = iter(rest)
        got = [x if x is not None else next(it) for x in got]
        if c >= 2 and got[-1] == got[0] and q - places[-1] + places[0] < n:
            j = next(j for j in range(c - 2, 0, -1) if got[j] != got[0])
            got[-1], got[j] = got[j], got[-1]
        for p, x in zip(places, got):
            out[p] = x
    return tuple(out)


def _best_stripe(owners, nodes, q):
    s = len(nodes)
    if owners is None:
        return tuple(nodes[p % s] for p in range(q))
    score = {(x, r): 0 for x in nodes for r in range(s)}
    for p, x in enumerate(owners):
        if (x, p % s) in score:
            score[(x, p % s)] += 1
    if s <= 7:
        perm = max(itertools.permutations(nodes), key=lambda pm: sum(score[(pm[r], r)] for r in range(s)))
    else:
        perm, free = [None] * s, set(nodes)
        for (x, r), _ in sorted(score.items(), key=lambda kv: -kv[1]):
            if perm[r] is None and x in free:
                perm[r] = x
                free.discard(x)
    return tuple(perm[p % s] for p in range(q))


def _fill(owners, nodes, q, n, lab=None):
    s = len(nodes)
    key = (lambda x: x) if lab is None else (lambda x: lab.get(x, x))
    lo, hi = balance_bounds(q, s)
    extra = q - lo * s
    counts = Counter(owners or ())
    # The nodes that own most today keep the ceil quota: fewer moves.
    ranked = sorted(nodes, key=lambda x: (-counts.get(x, 0), x))
    quota = {x: hi if i < extra else lo for i, x in enumerate(ranked)}
    room = None if lab is None else zone_extras(Counter(key(x) for x in nodes), q, s, n)
    if room is not None and hi > lo:  # with zones: no zone above floor(Q/n)
        quota, left = {x: lo for x in nodes}, extra
        for x in ranked:
            if left and room[key(x)] > 0:
                quota[x], left = hi, left - 1
                room[key(x)] -= 1
    # what each label has left to place: the label with most left goes first (without labels
    # this is the node's quota, so the order is unchanged)
    lq = Counter()
    for x in nodes:
        lq[key(x)] += quota[x]
    seq, last, stack, steps = [], {x: -1 for x in nodes}, [], 0

    def candidates(p):
        recent = {key(x) for x in seq[max(0, p - n + 1):p]}
        if p + n - 1 >= q:  # wrap: the window also covers the first partitions
            recent.update(key(x) for x in seq[:p + n - q])
        ok = [x for x in nodes if quota[x] > 0 and key(x) not in recent]
        if owners is None:
            ok.sort(key=lambda x: (-lq[key(x)], -quota[x], last[x], x))
            return ok
        # Keep the current owner; else avoid the owners just ahead, so one move does not force more.
        ahead = {key(owners[(p + d) % q]) for d in range(1, n)}
        ok.sort(key=lambda x: (key(x) in ahead, -lq[key(x)], -quota[x], last[x], x))
        if owners[p] in ok:
            ok.remove(owners[p])
            ok.insert(0, owners[p])
        return ok

    stack.append((candidates(0), 0, -1))
    while stack:
        steps += 1
        if steps > _DFS_BUDGET:
            return None
        cands, i, prev_last = stack[-1]
        if seq and len(seq) == len(stack):  # undo the choice made at this depth
            x = seq.pop()
            quota[x] += 1
            lq[key(x)] += 1
            last[x] = prev_last
        if i >= len(cands):
            stack.pop()
            continue
        x = cands[i]
        stack[-1] = (cands, i + 1, last[x])
        seq.append(x)
        quota[x] -= 1
        lq[key(x)] -= 1
        last[x] = len(seq) - 1
        if len(seq) == q:
            return tuple(seq)
        stack.append((candidates(len(seq)), 0, -1))
    return None


# -- join -------------------------------------------------------------------------------------

def join(ring, node_id, zone=None):
    """Claim for ring.nodes + [node_id]: the new node takes partitions from the most loaded
    nodes, never within n-1 of another of its own, fixing any repeat at the wrap first.

    With zones (the ring's members' and `zone`, when zone_labels asks zone spacing of them) it
    first tries the same with its zone: never within n-1 of a partition of its zone."""
    owners, n, q = list(ring.owners), ring.n, ring.q
    zones = members_of(ring)
    zones[node_id] = zone
    nodes = sorted(zones)
    s1 = len(nodes)
    if s1 > q:
        raise RingError(f"{s1} nodes cannot share {q} partitions (each must own at least one)")
    lab = zone_labels(zones, q, n)
    if lab is not None:
        got = _join_tries(owners, node_id, nodes, n, lab)
        if got is not None:
            return Claim(tuple(got), False)
    got = _join_tries(owners, node_id, nodes, n, None, _soft(zones))
    if got is not None:
        return Claim(tuple(got), False)
    w = n if s1 >= n else 1
    rng = random.Random(f"{q}/{n}/{','.join(nodes)}")
    striped = restripe(owners, nodes, q, n, lab)
    if s1 > n:
        got = _repair(owners, _take(owners, node_id, s1, 1, None), w, rng)
        if got is not None and not check(got, nodes, n) and _moves(owners, got) <= _moves(owners, striped):
            return Claim(tuple(got), False)
    return Claim(striped, True)


def _join_tries(owners, node_id, nodes, n, lab, soft=None):
    """The minimal-movement ways to join (spaced by `lab`, or by node when None; `soft`: see
    _soft): the first valid owner table found, or None."""
    q, s1 = len(owners), len(nodes)
    w = n if s1 >= n else 1
    rng = random.Random(f"{q}/{n}/{','.join(nodes)}")
    # With S+1 = n only a striping is valid (but for the wrap): one cheap try, then restripe.
    tries = [lambda: _take(owners, node_id, s1, w, None, lab, soft)]
    if s1 > n:
        step = max(1, q // max(1, q // s1))
        arcs = [lambda o=o: _take_arcs(owners, node_id, s1, w, o, lab, soft) for o in range(step)]
        # Large Q: the arcs first (linear time; the greedy is quadratic in Q/S).
        tries = arcs[:1] + tries + arcs[1:] if q > _GREEDY_MAX_Q else tries + arcs
        tries += [lambda: _take(owners, node_id, s1, w, rng, lab, soft)] * _RETRIES
    for attempt in tries:
        got = attempt()
        if got is not None and not check(got, nodes, n, lab):
            return got
    return None


def _take_arcs(owners, new, s1, w, offset, lab=None, soft=None):
    """Second way to join: cut the ring into m equal arcs from `offset`; the new node takes one
    partition in the first len - (w-1) of each arc (so its partitions are >= w apart, wrap
    included); which donor gives in which arc is a b-matching (each donor between what balance
    forces and what it may give). With labels, never within w-1 of its zone's partitions."""
    q = len(owners)
    lo, hi = balance_bounds(q, s1)
    counts = Counter(owners)
    must = {x: max(0, c - hi) for x, c in counts.items()}
    may = {x: c - lo for x, c in counts.items()}
    m = max(lo, sum(must.values()))
    bounds = [offset + (j * q) // m for j in range(m + 1)]
    spot, options = {}, {}
    near = _near_label(owners, new, w, lab)
    for j in range(m):
        here = {}
        for p in range(bounds[j], bounds[j + 1] - w + 1):
            if p % q not in near:
                here.setdefault(owners[p % q], p % q)
                if soft is not None:  # the spot with fewest of new's zone near it
                    x, r = owners[p % q], here[owners[p % q]]
                    if _conflicts(owners, p % q, soft[new], w, soft) < _conflicts(owners, r, soft[new], w, soft):
                        here[x] = p % q
        spot[j] = here
        if lab is None:
            options[j] = sorted(here, key=lambda x: (-counts[x], x))
        else:  # the new node's zone gives first, so that zone does not grow
            options[j] = sorted(here, key=lambda x: (lab.get(x, x) != lab[new], -counts[x], x))
    match = _bmatch(range(m), options, must, may)
    if match is None:
        return None
    out = list(owners)
    for j, x in match.items():
        out[spot[j][x]] = new
    return out


def _bmatch(items, options, low, high):
    """Give each item one of its options (groups) so that group g gets between low[g] and
    high[g] items; shortest augmenting paths. {item: group}, or None when impossible."""
    holder, held, load = {}, {g: set() for g in high}, Counter()
    dead = set()  # groups a failed search visited: no path to spare room until the next success

    def augment(item, cap):
        room = [g for g in options[item] if load[g] < cap[g]]
        if room:  # direct: to the option with the most room left (keeps later paths short)
            g = max(room, key=lambda g: cap[g] - load[g])
            holder[item] = g
            held[g].add(item)
            load[g] += 1
            return True
        prev, frontier = {}, []
        for g in options[item]:
            if g not in prev and g not in dead:
                prev[g] = (item, None)
                frontier.append(g)
        while frontier:
            nxt = []
            for g in frontier:
                if load[g] < cap[g]:
                    while g is not None:
                        it, g0 = prev[g]
                        if g0 is not None:
                            held[g0].discard(it)
                            load[g0] -= 1
                        holder[it] = g
                        held[g].add(it)
                        load[g] += 1
                        g = g0
                    dead.clear()
                    return True
                for it2 in held[g]:
                    for g2 in options[it2]:
                        if g2 not in prev and g2 not in dead:
                            prev[g2] = (it2, g)
                            nxt.append(g2)
            frontier = nxt
        dead.update(prev)
        return False

    need = sum(low.values())
    for item in items:
        if sum(load.values()) >= need:  # every group has its minimum: stop searching
            break
        augment(item, low)
    if any(load[g] < low[g] for g in low):
        return None
    dead.clear()
    for item in items:
        if item not in holder and not augment(item, high):
            return None
    return holder


def _take(owners, new, s1, w, rng, lab=None, soft=None):
    q = len(owners)
    lo, hi = balance_bounds(q, s1)
    counts = Counter(owners)
    where = {x: [] for x in counts}
    for p, x in enumerate(owners):
        where[x].append(p)
    must = {x: max(0, c - hi) for x, c in counts.items()}
    may = {x: c - lo for x, c in counts.items()}
    m = max(lo, sum(must.values()))
    out = list(owners)
    taken = Counter()
    blocked = [False] * q
    free = Counter(counts)  # partitions of each node not yet blocked
    chosen = []

    def ok(p):
        x = owners[p]
        return not blocked[p] and taken[x] < may[x]

    def same(x):
        return lab is not None and lab.get(x, x) == lab[new]

    spread = [q] * q  # distance to the nearest partition already taken (farthest-point choice)
    for r in _near_label(owners, new, w, lab):  # with zones: not near a partition of new's zone
        blocked[r] = True
        free[owners[r]] -= 1

    def take(p):
        taken[owners[p]] += 1
        out[p] = new
        chosen.append(p)
        for step in (1, -1):  # the distance field only changes out to where it was closer
            d = 0
            while d <= q // 2 and spread[(p + step * d) % q] > d:
                spread[(p + step * d) % q] = d
                d += 1
        for d in range(-(w - 1), w):
            r = (p + d) % q
            if not blocked[r]:
                blocked[r] = True
                free[owners[r]] -= 1

    # 1. repeats already within a window (the wrap of an S = n ring): the new node takes one.
    for a, b in _repeats(owners if lab is None else [lab.get(x, x) for x in owners], w):
        if out[a] == new or out[b] == new:
            continue
        pick = [p for p in (a, b) if ok(p)]
        if not pick:
            return None
        take(max(pick, key=lambda p: must[owners[p]] - taken[owners[p]]))
    # 2. the nodes above ceil(Q/(S+1)) must give; the most constrained node gives first.
    # 3. then the most loaded give until the new node has floor(Q/(S+1)).
    while len(chosen) < m:
        need = [x for x in must if taken[x] < must[x]]
        pool = need or [x for x in may if taken[x] < may[x]]
        if not pool:
            return None
        if need:
            x = min(pool, key=lambda x: (free[x] - (must[x] - taken[x]), x))
        else:  # (with zones: the new node's zone gives first, so that zone does not grow)
            x = max(pool, key=lambda x: (same(x), counts[x] - taken[x], x))
        cands = [p for p in where[x] if ok(p)]
        if not cands:
            if need:
                return None
            may[x] = taken[x]
            continue
        if soft is not None:  # fewest of new's zone near it first
            cands = _fewest(cands, lambda p: _conflicts(out, p, soft[new], w, soft))
        if rng is None:
            p = max(cands, key=lambda p: (spread[p], -p))
        else:
            p = max(cands, key=lambda p: (spread[p] + rng.random() * w, -p))
        take(p)
    return out


def _repeats(owners, w):
    q = len(owners)
    pairs = []
    for a in range(q):
        for d in range(1, w):
            b = (a + d) % q
            if b != a and owners[a] == owners[b]:
                pairs.append((a, b))
    return pairs


# -- leave ------------------------------------------------------------------------------------

def leave(ring, node_id):
    """Claim for ring.nodes - [node_id]: each of the leaver's partitions goes to a node that is
    not within n-1 of it, the least loaded first, by shortest augmenting paths (a small flow, so
    it finds an assignment whenever one exists). If none exists (small S), a swap search also
    moves other partitions, unless re-striping moves fewer.

    With zones (when zone_labels asks zone spacing of the members left) it first tries the same
    with zones: a partition goes to a node whose zone is not within n-1 of it."""
    owners, n, q = list(ring.owners), ring.n, ring.q
    if node_id not in ring.nodes:
        raise RingError(f"{node_id!r} is not a member")
    nodes = [x for x in ring.nodes if x != node_id]
    if not nodes:
        raise RingError("the last node cannot leave")
    w = n if len(nodes) >= n else 1
    zones = members_of(ring)
    zones.pop(node_id, None)
    lab = zone_labels(zones, q, n)
    if lab is not None:
        got = _give(owners, node_id, nodes, w, lab=lab)
        if got is not None and not check(got, nodes, n, lab):
            return Claim(tuple(got), False)
    got = _give(owners, node_id, nodes, w, soft=_soft(zones))
    if got is not None and not check(got, nodes, n):
        return Claim(tuple(got), False)
    striped = restripe([x if x != node_id else None for x in owners], nodes, q, n, lab)
    if len(nodes) > n:
        start = _fill_balanced(owners, node_id, nodes, w)
        found = [_give(owners, node_id, nodes, w, extra_moves=True)]
        found += [_repair(owners, start, w, random.Random(q * seed + len(nodes))) for seed in (1, 2)]
        found = [got for got in found if got is not None and not check(got, nodes, n)]
        if found:
            got = min(found, key=lambda got: _moves(owners, got))
            if _moves(owners, got) <= _moves(owners, striped):
                return Claim(tuple(got), False)
    return Claim(striped, True)


def _moves(a, b):
    return sum(x != y for x, y in zip(a, b))


def _give(owners, leaver, nodes, w, extra_moves=False, lab=None, soft=None):
    q = len(owners)
    key = (lambda x: x) if lab is None else (lambda x: lab.get(x, x))
    lo, hi = balance_bounds(q, len(nodes))
    holder = [None if x == leaver else x for x in owners]
    load = Counter(x for x in holder if x is not None)
    held = {x: [] for x in nodes}  # the leaver's partitions given to x so far (movable again)
    order = sorted(nodes, key=lambda x: (load[x], x))

    def allowed(p):
        near = {key(holder[(p + d) % q]) for d in range(-(w - 1), w) if d}
        ok = [x for x in order if key(x) not in near and x != holder[p]]
        if soft is not None:  # nodes of a zone not near p first (a stable sort keeps the order)
            zones_near = {soft.get(holder[(p + d) % q]) for d in range(-(w - 1), w) if d}
            ok.sort(key=lambda x: soft[x] in zones_near)
        return ok

    def augment(p, cap):
        # BFS over nodes: p -> x (allowed at p); if x is full, pass on one of the leaver's
        # partitions x was given earlier (shortest augmenting path of a b-matching).
        prev = {}
        frontier = []
        for x in allowed(p):
            prev[x] = (p, None)
            frontier.append(x)
        while frontier:
            nxt = []
            for x in frontier:
                if load[x] < cap(x):
                    path = []
                    while x is not None:
                        p2, x0 = prev[x]
                        path.append((p2, x0, x))
                        x = x0
                    for p2, x0, x1 in path:
                        if x0 is not None:
                            held[x0].remove(p2)
                            load[x0] -= 1
                        holder[p2] = x1
                        held[x1].append(p2)
                        load[x1] += 1
                    return True
                for p2 in held[x]:
                    for y in allowed(p2):
                        if y not in prev:
                            prev[y] = (p2, x)
                            nxt.append(y)
            frontier = nxt
        return False

    def chain(p):
        # No node fits at p: move a neighbour's owner y from r into p (y keeps its count) and
        # give r to a node z that fits there: one extra move.
        best = None
        for d in range(-(w - 1), w):
            r = (p + d) % q
            y = holder[r]
            if not d or y is None:
                continue
            if y in {holder[(p + e) % q] for e in range(-(w - 1), w) if e and (p + e) % q != r}:
                continue
            holder[p], holder[r] = y, None
            near = {holder[(r + e) % q] for e in range(-(w - 1), w) if e}
            holder[p], holder[r] = None, y
            for z in order:
                if z not in near and z != y and load[z] < hi:
                    key = (load[z] >= lo, load[z], abs(d))
                    if best is None or key < best[0]:
                        best = (key, r, y, z)
        if best is None:
            return False
        _, r, y, z = best
        held[y].append(p)
        holder[p], holder[r] = y, z
        load[z] += 1
        return True

    parts = [p for p in range(q) if owners[p] == leaver]
    for p in parts:
        augment(p, lambda x: lo)
    for p in parts:
        if holder[p] is None and not augment(p, lambda x: hi) and not (extra_moves and chain(p)):
            return None
    if any(load[x] < lo for x in nodes):
        return None
    return holder


def _fill_balanced(owners, leaver, nodes, w):
    """The leaver's partitions to nodes below floor(Q/S) first, then to nodes at it, preferring a
    node not within w-1 (a balanced start for _repair, with few violations)."""
    q = len(owners)
    lo, hi = balance_bounds(q, len(nodes))
    load = Counter(x for x in owners if x != leaver)
    out = list(owners)
    for p, x in enumerate(owners):
        if x == leaver:
            near = {out[(p + d) % q] for d in range(-(w - 1), w) if d}
            y = min((y for y in nodes if load[y] < hi), key=lambda y: (load[y] >= lo, y in near, load[y], y))
            out[p] = y
            load[y] += 1
    return out


def _repair(orig, cur, w, rng, max_iter=3000):
    """Min-conflicts search by swapping two partitions' owners (swaps keep the balance): remove
    spacing violations first, then prefer swaps that restore original owners (fewer moves)."""
    q = len(cur)
    cur = list(cur)

    def bad(i):
        return len({cur[(i + k) % q] for k in range(w)}) < w

    def local(i, j):
        starts = {(i - k) % q for k in range(w)} | {(j - k) % q for k in range(w)}
        return sum(bad(s) for s in starts)

    def moved(i, x):
        return x != orig[i]

    violated = {i for i in range(q) if bad(i)}
    for _ in range(max_iter):
        if not violated:
            return cur
        start = rng.choice(sorted(violated))
        window = [(start + k) % q for k in range(w)]
        seen = Counter(cur[p] for p in window)
        i = rng.choice([p for p in window if seen[cur[p]] > 1])
        best, best_key = [], None
        for j in range(q):
            if cur[j] == cur[i]:
                continue
            before = local(i, j)
            dm = moved(i, cur[j]) + moved(j, cur[i]) - moved(i, cur[i]) - moved(j, cur[j])
            cur[i], cur[j] = cur[j], cur[i]
            key = (local(i, j) - before, dm)
            cur[i], cur[j] = cur[j], cur[i]
            if best_key is None or key < best_key:
                best, best_key = [j], key
            elif key == best_key:
                best.append(j)
        if not best:
            return None
        if best_key[0] > 0 and rng.random() < 0.7:
            continue
        j = rng.choice(best)
        cur[i], cur[j] = cur[j], cur[i]
        for s in {(i - k) % q for k in range(w)} | {(j - k) % q for k in range(w)}:
            if bad(s):
                violated.add(s)
            else:
                violated.discard(s)
    return None


# -- zones changed ----------------------------------------------------------------------------

def rezone(ring, zones):
    """Claim for ring's members with the zones in `zones` ({node: zone or None}; a member not in
    it keeps its zone): the owners unchanged when zone spacing is not asked of the new zones
    (zone_labels) or already holds, else a layout spaced by zone that keeps as many owners as
    restripe finds a way to (fallback True: more than minimal moves)."""
    members = members_of(ring)
    unknown = set(zones) - set(members)
    if unknown:
        raise RingError(f"not members: {sorted(unknown)}")
    members.update(zones)
    owners, nodes = tuple(ring.owners), sorted(members)
    lab = zone_labels(members, ring.q, ring.n)
    if lab is None or not check(owners, nodes, ring.n, lab):
        return Claim(owners, False)
    got = tuple(restripe(owners, nodes, ring.q, ring.n, lab))
    return Claim(got, got != owners)
