"""Phi accrual and the two-source rule, on synthetic timestamps (seconds)."""
import math
import random

import pytest

from kvnet.membership.detector import (
    DOWN, LOG10_E, UNKNOWN, UP, Liveness, PhiDetector, Transition, detection_time, phi_of,
)

I = 0.1         # gossip interval: 100 ms


def steady(det, peer="x", n=200, start=0.0, gen=1, jitter=0.0, rng=None, hb0=1):
    """n arrivals every I (+- jitter); -> (time of the last arrival, last heartbeat)."""
    t = start
    for hb in range(hb0, hb0 + n):
        t += I * (1 + (rng.uniform(-jitter, jitter) if jitter else 0))
        det.heartbeat(peer, t, (gen, hb))
    return t, hb0 + n - 1


# ---- the math ---------------------------------------------------------------------------------

def test_exponential_model_math():
    # phi = -log10(P(silence >= d)) for exponential arrivals: P = exp(-d/m)
    for d, m in [(0.05, 0.1), (1.0, 0.1), (3.0, 1.0)]:
        assert phi_of(d, m) == pytest.approx(-math.log10(math.exp(-d / m)))
    # threshold 8 -> 8 * ln(10) = 18.42 mean intervals
    assert detection_time(8, 1.0) == pytest.approx(8 * math.log(10)) == pytest.approx(18.4207, 1e-4)
    assert phi_of(detection_time(5, 0.1), 0.1) == pytest.approx(5)
    assert LOG10_E == pytest.approx(0.4343, 1e-3)


def test_no_false_positive_over_10000_jittered_intervals():
    rng = random.Random(6)
    det = PhiDetector(interval=I)
    t, worst = 0.0, 0.0
    det.heartbeat("x", t, (1, 0))
    for hb in range(1, 10_001):
        gap = I * (1 + rng.uniform(-0.3, 0.3))
        before = t + gap - 1e-9              # the highest phi of this interval: just before news
        worst = max(worst, det.phi("x", before))
        assert det.suspects(before) == []
        t += gap
        assert det.heartbeat("x", t, (1, hb))
    assert worst < 1.0                       # 1.3 intervals / mean ~ 0.56, bootstrap included
    assert det.mean("x") == pytest.approx(I, rel=0.1)


def test_silence_is_suspected_after_about_18_mean_intervals():
    det = PhiDetector(interval=I, threshold=8)
    t, _ = steady(det, n=300)                # window full of 100 ms samples
    assert det.mean("x") == pytest.approx(I)
    limit = detection_time(8, I)             # 1.842 s
    assert limit / I == pytest.approx(18.42, abs=0.01)
    assert det.suspects(t + limit - 0.01) == []
    assert det.suspects(t + limit + 0.01) == ["x"]
    assert det.phi("x", t + 18 * I) < 8 < det.phi("x", t + 19 * I)
    assert det.suspects(t + 10 * I, threshold=4) == ["x"]        # per-call threshold


@pytest.mark.parametrize("threshold", [1, 3, 5, 8, 12])
def test_detection_time_scales_with_threshold(threshold):
    det = PhiDetector(interval=I, threshold=threshold)
    t, _ = steady(det, n=150)
    d = detection_time(threshold, I)
    assert not det.suspected("x", t + d * 0.99) and det.suspected("x", t + d * 1.01)


def test_bootstrap_uses_twice_the_gossip_interval():
    det = PhiDetector(interval=I)
    assert det.phi("x", 5.0) == 0.0 and det.suspects(5.0) == []       # never heard: not suspected
    assert det.heartbeat("x", 1.0, (1, 0))
    assert det.mean("x") == pytest.approx(2 * I)
    assert not det.suspected("x", 1.0 + detection_time(8, 2 * I) - 0.01)
    assert det.suspected("x", 1.0 + detection_time(8, 2 * I) + 0.01)
    det.heartbeat("x", 1.1, (1, 1))
    assert det.mean("x") == pytest.approx((2 * I + I) / 2)
    assert PhiDetector(interval=I, initial_interval=0.5).heartbeat("y", 0, (1, 0))


def test_only_newer_versions_are_arrivals():
    det = PhiDetector(interval=I)
    det.heartbeat("x", 0.0, (1, 5))
    assert not det.heartbeat("x", 0.05, (1, 5))          # the same news by another route
    assert not det.heartbeat("x", 0.06, (1, 4))          # history
    assert not det.heartbeat("x", 0.07, (0, 99))         # an older generation
    assert det.last_arrival("x") == 0.0 and det.version("x") == (1, 5)
    assert det.mean("x") == pytest.approx(2 * I)         # nothing recorded
    assert det.heartbeat("x", 0.1, (1, 6))
    assert det.version("x") == (1, 6) and len(det._w["x"].intervals) == 2


def test_restart_new_generation_resets_the_window():
    det = PhiDetector(interval=I)
    t, hb = steady(det, n=150)
    t += 30.0                                            # down and restarted 30 s later
    assert det.suspected("x", t)
    assert det.heartbeat("x", t, (2, 0))                 # heartbeat 0 under a higher generation
    assert det.version("x") == (2, 0)
    assert det.phi("x", t) == 0.0 and det.mean("x") == pytest.approx(2 * I)
    assert len(det._w["x"].intervals) == 1               # the 30 s gap is not a sample
    assert not det.heartbeat("x", t + 0.1, (1, hb + 1))  # the old process's late news


def test_a_silence_is_not_a_sample():
    det = PhiDetector(interval=I)
    t, hb = steady(det, n=150)
    det.heartbeat("x", t + 5.0, (1, hb + 1))             # a pause (SIGSTOP) of 5 s, same process
    assert det.mean("x") == pytest.approx(I)             # not recorded: it was a failure
    det.heartbeat("x", t + 5.5, (1, hb + 2))             # 0.5 s: phi 2.2 at arrival, recorded
    assert det.mean("x") > I
    capped = PhiDetector(interval=I, max_interval=0.3)
    t, hb = steady(capped, n=150)
    capped.heartbeat("x", t + 0.5, (1, hb + 1))
    assert capped.mean("x") == pytest.approx(I)


def test_window_keeps_the_last_n_intervals():
    det = PhiDetector(interval=I, window=10)
    t, hb = steady(det, n=50)
    for k in range(1, 11):
        det.heartbeat("x", t + 0.3 * k, (1, hb + k))
    assert det.mean("x") == pytest.approx(0.3)
    assert len(det._w["x"].intervals) == 10


def test_bad_configuration_is_refused():
    for kw in [dict(interval=0), dict(window=0), dict(window=1.5), dict(threshold=0),
               dict(initial_interval=-1), dict(initial_interval=0)]:
        with pytest.raises(ValueError):
            PhiDetector(**kw)


def test_forget_and_peers():
    det = PhiDetector(interval=I)
    det.heartbeat("x", 0, (1, 0))
    det.heartbeat("y", 0, (1, 0))
    det.forget("x")
    assert det.peers() == ["y"] and det.version("x") is None and det.mean("x") is None


# ---- the two-source rule ----------------------------------------------------------------------

def live(me="a", ttl=None):
    return Liveness(me, PhiDetector(interval=I, threshold=8), ttl=ttl)


def beats(lv, peer, t0, n, gen=1, hb0=1):
    t = t0
    for hb in range(hb0, hb0 + n):
        t += I
        lv.heartbeat(peer, t, gen, hb)
    return t, hb0 + n - 1


LIMIT = detection_time(8, I)


def test_own_detector_alone_never_marks_down():
    lv = live()
    t, _ = beats(lv, "x", 0.0, 150)
    for k in range(1, 400):                              # 40 s of silence, no second source
        assert lv.update(t + k * I) == []
    assert lv.state("x") == UP and lv.suspected_by("x", t + 40) == ("a",)


def test_another_report_alone_never_marks_down():
    lv = live()
    t, hb = beats(lv, "x", 0.0, 150)
    for k in range(1, 100):                              # b and c say x is dead; we hear it
        now = t + k * I
        lv.report("b", ["x"], now)
        lv.report("c", ["x"], now)
        lv.heartbeat("x", now, 1, hb + k)
        assert lv.update(now) == []
    assert lv.state("x") == UP and lv.suspected_by("x", now) == ("b", "c")


def test_own_suspicion_plus_report_marks_down_and_newer_heartbeat_up():
    lv = live()
    t, hb = beats(lv, "x", 0.0, 150)
    lv.report("b", ["x"], t + LIMIT - 0.05)              # b's detector went first
    assert lv.update(t + LIMIT - 0.01) == []             # ours not yet
    assert lv.update(t + LIMIT + 0.01) == [Transition("x", False)]
    assert lv.state("x") == DOWN and lv.down() == ["x"] and not lv.is_up("x")
    assert lv.update(t + LIMIT + 0.5) == []              # reported once
    assert lv.heartbeat("x", t + 3, 1, hb) == []         # old news does not bring it back
    assert lv.state("x") == DOWN
    assert lv.heartbeat("x", t + 3, 1, hb + 1) == [Transition("x", True)]
    assert lv.state("x") == UP and lv.update(t + 3.05) == []


def test_failed_indirect_probe_is_a_second_source():
    lv = live()
    t, hb = beats(lv, "x", 0.0, 150)
    now = t + LIMIT + 0.01
    lv.probe("x", "b", ok=True, now=now)
    assert lv.update(now) == []
    lv.probe("x", "b", ok=False, now=now)
    assert lv.second_sources("x", now) == [("probe", "b")]
    assert lv.update(now + 0.01) == [Transition("x", False)]
    lv.heartbeat("x", now + 1, 2, 0)                     # restarted: up, probes cleared
    assert lv.state("x") == UP and lv.failed_probes("x", now + 1) == ()


def test_a_slow_link_does_not_mark_a_healthy_node_down():
    """a's link to x is slow (its direct heartbeats stop); b still hears x."""
    rng = random.Random(1)
    lv = live()
    t, hb = beats(lv, "x", 0.0, 150)
    marked = []
    # 1. b relays x's heartbeats by gossip (late and irregular): a's own detector stays quiet.
    for _ in range(300):
        t += I * rng.uniform(1.0, 3.0)
        hb += rng.randint(1, 3)
        lv.heartbeat("x", t, 1, hb)
        lv.report("b", [], t)
        marked += lv.update(t)
    # 2. Worse: nothing about x reaches a at all, so a suspects it, but b's reports do not
    #    agree and an indirect probe through b succeeds.
    for k in range(1, 300):
        now = t + k * I
        lv.report("b", [], now)
        if k % 20 == 0:
            lv.probe("x", "b", ok=True, now=now)
        marked += lv.update(now)
    assert marked == [] and lv.state("x") == UP
    assert lv.suspected_by("x", now) == ("a",)


def test_sources_that_do_not_count():
    lv = live(ttl=1.0)
    t, _ = beats(lv, "x", 0.0, 150)
    _, _ = beats(lv, "b", 0.0, 150)
    now = t + LIMIT + 0.1
    lv.report("a", ["x"], now)                           # myself
    lv.report("x", ["x"], now)                           # the peer about itself
    lv.probe("x", "x", ok=False, now=now)
    lv.probe("x", "a", ok=False, now=now)
    lv.report("c", ["x"], now - 1.5)                     # stale (ttl 1 s)
    lv.probe("x", "d", ok=False, now=now - 1.5)
    assert lv.second_sources("x", now) == []
    assert lv.update(now) == []                          # b is silent too: one source only
    # a reporter that is itself DOWN here does not count either
    lv2 = live()
    t, _ = beats(lv2, "x", 0.0, 150)
    lv2.report("x", ["b"], t)
    lv2.report("b", ["x"], t + LIMIT)
    assert lv2.update(t + LIMIT + 0.1) == [Transition("x", False)]
    lv2.report("x", ["b"], t + LIMIT + 0.1)
    assert lv2.reporters("b", t + LIMIT + 0.1) == ()


def test_report_replaces_the_reporters_previous_one():
    lv = live()
    lv.report("b", ["x", "y"], 1.0)
    lv.report("b", ["y"], 1.1)
    assert lv.reporters("x", 1.2) == () and lv.reporters("y", 1.2) == ("b",)


def test_view_for_kvctl_status():
    lv = live()
    t, _ = beats(lv, "x", 0.0, 150)
    beats(lv, "y", 0.0, 150)
    now = t + LIMIT + 0.2
    lv.report("y", ["x", "z"], now)                      # z: only ever reported on
    lv.update(now)
    rows = {r.node: r for r in lv.view(now)}
    assert sorted(rows) == ["x", "y", "z"]
    x = rows["x"]
    assert x.state == DOWN and x.suspected_by == ("a", "y") and x.phi > 8
    assert x.age == pytest.approx(LIMIT + 0.2)
    assert rows["z"].state == UNKNOWN and rows["z"].age is None
    assert rows["y"].state == UP and rows["y"].suspected_by == ("a",)    # one source only
    assert lv.my_suspects(now) == ["x", "y"]
    lv.forget("x")
    assert lv.state("x") == UNKNOWN and lv.down() == []


def test_cluster_of_five_detects_a_silent_node_within_detection_time_plus_a_round():
    """Every member's detector, fed the same steady gossip, then x goes silent. Each reports
    its suspects every round; each marks x down once its own detector and one report agree."""
    rng = random.Random(3)
    nodes = ["a", "b", "c", "d"]
    lvs = {n: live(n) for n in nodes}
    t, hb = 0.0, 0
    for _ in range(150):
        t += I
        hb += 1
        for n in nodes:
            lvs[n].heartbeat("x", t + rng.uniform(0, 0.02), 1, hb)
    stop = t
    down_at = {}
    while len(down_at) < len(nodes) and t < stop + 10:
        t += I
        for n in nodes:
            for other in rng.sample([o for o in nodes if o != n], 2):    # fanout 2
                lvs[other].report(n, lvs[n].my_suspects(t), t)
        for n in nodes:
            if lvs[n].update(t):
                down_at[n] = t - stop
    assert sorted(down_at) == nodes
    assert all(LIMIT - 0.05 < d <= LIMIT + 3 * I for d in down_at.values()), down_at


# ---- suspicion kept incrementally --------------------------------------------------------------

def _brute(det, now):
    return sorted(p for p in det.peers() if det.phi(p, now) >= det.threshold)


def test_suspects_are_every_window_over_the_threshold_as_time_and_news_go_on():
    rng = random.Random(11)
    det = PhiDetector(interval=I)
    peers = [f"p{i}" for i in range(30)]
    hb = {p: 0 for p in peers}
    gen = {p: 1 for p in peers}
    t = 0.0
    for step in range(3000):
        t += rng.uniform(0, 0.05)
        for p in rng.sample(peers, 3):
            if p in ("p1", "p2") and 50 < t < 120:        # silent for a while
                continue
            if rng.random() < 0.002:
                gen[p] += 1                                # restarted: a fresh window
            hb[p] += 1
            det.heartbeat(p, t, (gen[p], hb[p]))
        if rng.random() < 0.001:
            det.forget(rng.choice(peers))
        assert det.suspects(t) == _brute(det, t), (step, t)
    assert det.suspects(t - 30) == _brute(det, t - 30)    # an earlier time: asked afresh


def test_suspects_looks_only_at_windows_whose_time_has_come(monkeypatch):
    import kvnet.membership.detector as D
    det = PhiDetector(interval=I)
    for i in range(1000):
        det.heartbeat(f"p{i}", 0.0, (1, 0))
    calls = []
    real = D.phi_of
    monkeypatch.setattr(D, "phi_of", lambda s, m: calls.append(1) or real(s, m))
    for k in range(100):                       # 100 rounds in which no window comes due
        assert det.suspects(k * 0.01) == []
    assert len(calls) < 10                     # (a scan of every window would make 100,000)
    assert det.suspects(10.0) == [f"p{i}" for i in sorted(range(1000), key=str)]
    assert len(calls) <= 1100
