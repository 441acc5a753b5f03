"""Zones for the claim (docs/ring.md, "Zones in the claim"; docs/algorithms.md, section 3):
which label each member is spaced by, whether zone spacing is asked of a member set, and the
small helpers the claim's zone-aware choices share. Pure Python, not hot."""
from collections import Counter


def zone_key(node, zone):
    """The label a member is spaced by: its zone, or for a member without one the node itself
    (a zone of its own, as the ring's walk counts it)."""
    return zone if zone is not None else ("", node)


def zone_labels(members, q, n):
    """{node: label} when spacing should be asked of zones for these members ((id, zone) pairs
    or a {id: zone} map), else None: no member has a zone, or the zones are too few or too
    unequal for every window of n partitions to span n zones with balanced ownership.

    Zone spacing is asked when Z > n zones can each hold at most floor(Q/n) partitions with
    balanced nodes (the nodes given ceil(Q/S) spread over the zones: zone_extras), or when
    Z = n zones hold S > n nodes in equal numbers (then only a striping of the zones does it,
    with the node-spacing rule for S = n at the wrap: see tight)."""
    zones = dict(members)
    if not zones or all(z is None for z in zones.values()):
        return None
    lab = {x: zone_key(x, z) for x, z in zones.items()}
    sizes = Counter(lab.values())
    s, nz = len(lab), len(sizes)
    if s > q or s <= n:
        return None
    if nz > n and zone_extras(sizes, q, s, n) is not None:
        return lab
    if nz == n and len(set(sizes.values())) == 1:
        return lab
    return None


def zone_extras(sizes, q, s, n):
    """{zone: how many of its nodes may own ceil(Q/S)} so that no zone owns more than
    floor(Q/n) partitions and the Q - S x floor(Q/S) ceil shares all have a place (most room
    first); None when there is no such spread."""
    lo = q // s
    extra, cap = q - lo * s, q // n
    room = {z: min(k, cap - k * lo) for z, k in sizes.items()}
    if min(room.values()) < 0 or sum(room.values()) < extra:
        return None
    return room


def tight(lab, n):
    """Z = n zones (zone_labels' second case): the zones are striped and, as for S = n nodes,
    the n - 1 windows at the wrap may repeat a zone when n does not divide Q."""
    return lab is not None and len(set(lab.values())) == n


def members_of(ring):
    """{node: zone} of a ring (or of anything with `nodes`, which then have no zones)."""
    members = getattr(ring, "members", None)
    return dict(members) if members else {x: None for x in ring.nodes}


def soft_labels(zones):
    """{node: zone key} when any member has a zone, else None: the node-spaced methods then
    prefer, among their valid choices, those that put a zone's partitions further apart (a
    preference only: what they move is unchanged)."""
    if all(z is None for z in zones.values()):
        return None
    return {x: zone_key(x, z) for x, z in zones.items()}


def conflicts(out, p, label, w, soft):
    """Partitions within w-1 of p (not p) whose owner's zone is `label`."""
    q = len(out)
    return sum(soft.get(out[(p + d) % q]) == label for d in range(-(w - 1), w) if d)


def near_label(owners, new, w, lab):
    """Partitions within w-1 of a partition of new's label (not counting that partition
    itself): where the new node may not go. Empty without labels."""
    q = len(owners)
    if lab is None:
        return set()
    mine = lab[new]
    out = set()
    for r, x in enumerate(owners):
        if lab.get(x, x) == mine:
            out.update((r + d) % q for d in range(-(w - 1), w) if d)
    return out


def fewest(items, cost):
    """The items of least cost, in their order."""
    costs = [cost(x) for x in items]
    low = min(costs)
    return [x for x, c in zip(items, costs) if c == low]


def zone_table(ring):
    """Per zone of a ring (members without one together under None), in zone order: {"zone",
    "nodes", "partitions" (owned), "replicas" (places in preference lists)} (KV.RING,
    KV.STATUS, kvctl ring and status)."""
    zones = members_of(ring)
    rows = {}
    for x in sorted(zones):
        rows.setdefault(zones[x], {"zone": zones[x], "nodes": [], "partitions": 0,
                                   "replicas": 0})["nodes"].append(x)
    for x in ring.owners:
        rows[zones[x]]["partitions"] += 1
    for p in range(ring.q):
        for x in ring.preference_list(p):
            rows[zones[x]]["replicas"] += 1
    return [rows[z] for z in sorted(rows, key=lambda z: (z is None, z or ""))]

