"""The benchmark's generated workload: the shape the numbers in docs/performance.md rest on."""

from __future__ import annotations

from collections import Counter

from bench.graph import GraphSpec, SocialGraph, workload
from bench.probes import percentile


def test_follower_counts_follow_zipf_by_rank_with_a_floor_and_a_cap() -> None:
    graph = SocialGraph(GraphSpec(users=1_000, zipf_s=1.1, max_followers=50_000))
    counts = [graph.followers_of[u] for u in graph.users]
    assert counts[0] == 50_000
    assert counts[1] == round(50_000 / 2**1.1)
    assert counts[9] == round(50_000 / 10**1.1)
    assert counts == sorted(counts, reverse=True)
    assert min(counts) >= 1


def test_authors_are_reproducible_and_drawn_by_popularity() -> None:
    graph = SocialGraph(GraphSpec(users=1_000))
    first, again, other = graph.authors(5_000, 1), graph.authors(5_000, 1), graph.authors(5_000, 2)
    assert first == again
    assert first != other
    drawn = Counter(first)
    # rank 1 is drawn about 2^1.1 times as often as rank 2, and far more than the tail
    assert drawn["u000001"] > drawn["u000002"] > drawn["u000100"]
    assert 1.6 < drawn["u000001"] / drawn["u000002"] < 2.8


def test_the_workload_mixes_edits_in_at_the_asked_rate() -> None:
    graph = SocialGraph(GraphSpec(users=1_000))
    writes = list(workload(graph, 10_000, 0.05, seed=3))
    posts = [w for w in writes if not w.edit]
    edits = [w for w in writes if w.edit]
    assert len(posts) == 10_000
    assert 400 < len(edits) < 600


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) != percentile([], 50)  # NaN: no values, no latency
