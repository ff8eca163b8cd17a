"""Targets, the terminal table, the JSON file and the chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

MB = 2**20


def ceiling_rate(r: dict[str, Any]) -> float:
    """The mean of the two ceiling runs (after the steady phase, and at the end)."""
    runs = [r[k]["messages_per_s"] for k in ("ceiling", "ceiling_end") if k in r]
    return sum(runs) / len(runs)


def checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    """What must hold for the numbers to mean anything: nothing lost, nothing dead-lettered."""
    s, st, h = r["steady"], r["storm"], r["half_load"]
    rows = [
        ("steady: every confirmed message is in the queue", s["delivered_to_queue"] == s["messages"]),
        ("half load: every confirmed message is in the queue", h["delivered_to_queue"] == h["messages"]),
        (
            "sweep: every confirmed message is in the queue",
            all(row["delivered_to_queue"] == row["messages"] for row in r["sweep"]["ours"]),
        ),
        (
            "references: every message is in the queue",
            all(r[k]["delivered"] == r[k]["messages"] for k in ("ceiling", "ceiling_end", "naive"))
            and all(row["delivered"] == row["messages"] for row in r["sweep"]["naive"]),
        ),
        ("nothing dead-lettered", r["dead_lettered"] == 0 and st["dead_lettered"] == 0),
        ("no event retried (no dependency failed one)", r["retried"] == 0 and st["retried"] == 0),
        ("storm: every post rewritten", st["posts_rewritten"] == st["expected_rewrites"]),
        ("storm: the second replica heard every edit", st["invalidations_received"] == st["edits"]),
        ("storm: no stale L1 entry left on the second replica", st["peer_l1_stale_after"] == 0),
    ]
    for cel in r["celebrity"]:
        rows.append(
            (
                f"celebrity {cel['followers']:,}: every recipient, every message in the queue",
                cel["recipients"] == cel["followers"] and cel["delivered_to_queue"] == cel["messages"],
            )
        )
    return [{"check": name, "ok": bool(ok)} for name, ok in rows]


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it is met."""
    steady, naive = r["steady"], r["naive"]
    small, large = r["celebrity"][0], r["celebrity"][-1]
    rows = [
        (
            "pipeline messages/s vs the ceiling",
            steady["messages_per_s"] / ceiling_rate(r),
            "≥ 0.8×",
            lambda v: v >= 0.8,
            "{:.2f}×",
        ),
        (
            "recipient deliveries/s vs the naive baseline",
            steady["recipients_per_s"] / naive["recipients_per_s"],
            "≥ 50×",
            lambda v: v >= 50,
            "{:,.0f}×",
        ),
        (
            "profile-source queries per micro-batch (steady)",
            steady["source_queries_per_batch"],
            "≤ 1",
            lambda v: v <= 1,
            "{:.3f}",
        ),
        (
            "profile-source queries per post (steady)",
            steady["source_queries_per_1000_posts"] / 10,
            "≤ 1 %",
            lambda v: v <= 1,
            "{:.2f} %",
        ),
        (
            f"RSS growth, celebrity {large['followers']:,}",
            large["rss_growth_mb"],
            "≤ 64 MB",
            lambda v: v <= 64,
            "{:.1f} MB",
        ),
        (
            f"RSS growth {large['followers']:,} minus {small['followers']:,} (flat)",
            large["rss_growth_mb"] - small["rss_growth_mb"],
            "≤ 8 MB",
            lambda v: v <= 8,
            "{:+.1f} MB",
        ),
        (
            "p99 latency at half load",
            r["half_load"]["latency_p99_ms"],
            "≤ 250 ms",
            lambda v: v <= 250,
            "{:.0f} ms",
        ),
    ]
    return _target_rows(rows)


def _target_rows(rows: list[Any]) -> list[dict[str, Any]]:
    """(measure, value, target, check, format) rows as the report's target dicts."""
    return [
        {
            "measure": name,
            "value": value,
            "target": target,
            "met": bool(ok(value)),
            "shown": fmt.format(value),
        }
        for name, value, target, ok, fmt in rows
    ]


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def print_report(r: dict[str, Any], console: Console) -> None:
    s, c, n, h, st = r["steady"], r["ceiling"], r["naive"], r["half_load"], r["storm"]
    hr = s["hit_ratio"]
    console.print(
        _table(
            f"1. steady: {s['posts']:,} posts + {s['edits']:,} edits, caches as after an hour "
            f"({s['primed']['prior_posts']:,} earlier posts, {s['primed']['distinct_authors']:,} authors)",
            [
                ("posts/s", f"{s['posts_per_s']:,.0f}"),
                ("messages/s", f"{s['messages_per_s']:,.0f}"),
                ("recipient deliveries/s", f"{s['recipients_per_s']:,.0f}"),
                (
                    "latency event → last confirm p50 / p99 (saturated)",
                    f"{s['latency_p50_ms']:.0f} / {s['latency_p99_ms']:.0f} ms",
                ),
                (
                    "cache hits L1 / L2 / source (+ shared waits)",
                    f"{hr['l1']:.1%} / {hr['l2']:.1%} / {hr['l3']:.1%} (+{hr['shared']:.1%})",
                ),
                ("profile-source queries per 1,000 posts", f"{s['source_queries_per_1000_posts']:.2f}"),
                (
                    f"  cold start (first {s['cold_start']['posts']:,} posts, empty caches)",
                    f"{s['cold_start']['source_queries_per_1000_posts']:.1f} per 1,000 posts, "
                    f"{s['cold_start']['source_queries_per_batch']:.2f} per micro-batch",
                ),
                (
                    "source queries / Redis MGETs per post micro-batch",
                    f"{s['source_queries_per_batch']:.3f} / {s['mget_per_post_batch']:.3f}",
                ),
                (
                    "Redis round trips per micro-batch (both streams)",
                    f"{s['redis_round_trips_per_batch']:.2f}",
                ),
                ("micro-batches, mean message size", f"{s['batches']:,}, {s['mean_message_bytes']:,.0f} B"),
                (
                    "messages confirmed / found in the queue",
                    f"{s['messages']:,} / {s['delivered_to_queue']:,}",
                ),
                ("peak RSS of the process", f"{s['peak_rss_mb']:.0f} MB"),
            ],
        )
    )
    for cel in r["celebrity"]:
        console.print(
            _table(
                f"2. celebrity: one post to {cel['followers']:,} followers",
                [
                    ("wall time", f"{cel['seconds']:.2f} s ({cel['recipients_per_s']:,.0f} recipients/s)"),
                    (
                        "messages confirmed / in the queue",
                        f"{cel['messages']:,} / {cel['delivered_to_queue']:,}",
                    ),
                    (
                        "RSS before → peak (growth)",
                        f"{cel['rss_before_mb']:.0f} → {cel['rss_peak_mb']:.0f} MB "
                        f"({cel['rss_growth_mb']:+.1f} MB)",
                    ),
                ],
            )
        )
    console.print(
        _table(
            f"3. profile storm: {st['edits']:,} edits, {st['posts_rewritten']:,} posts rewritten",
            [
                ("rewrites/s (edits/s)", f"{st['rewrites_per_s']:,.0f} ({st['edits_per_s']:,.0f})"),
                (
                    "invalidation → second worker's L1 p50 / p99",
                    f"{st['invalidation_p50_ms']:.1f} / {st['invalidation_p99_ms']:.1f} ms",
                ),
                (
                    "second worker: invalidations heard, stale L1 entries after",
                    f"{st['invalidations_received']:,}, {st['peer_l1_stale_after']}",
                ),
            ],
        )
    )
    console.print(
        _table(
            f"4. half load: {h['posts']:,} posts offered at {h['offered_posts_per_s']:,.0f}/s (open loop)",
            [
                (
                    "latency p50 / p99 / max",
                    f"{h['latency_p50_ms']:.0f} / {h['latency_p99_ms']:.0f} / {h['latency_max_ms']:.0f} ms",
                )
            ],
        )
    )
    console.print(
        _table(
            "references (same broker, same run)",
            [
                (
                    "ceiling: bare aio-pika, same window and body sizes",
                    f"{c['messages_per_s']:,.0f} and {r['ceiling_end']['messages_per_s']:,.0f} msg/s "
                    f"({c['messages']:,} msgs each, mean {c['mean_bytes']:,.0f} B)",
                ),
                (
                    "naive baseline: one message per follower, each confirm awaited",
                    f"{n['recipients_per_s']:,.0f} recipients/s ({n['messages']:,} msgs)",
                ),
            ],
        )
    )


def print_verdict(r: dict[str, Any], console: Console) -> None:
    """The checks and the targets table."""
    smoke = r.get("run", {}).get("smoke", False)
    title = "targets (smoke sizes: a harness check, not a measurement)" if smoke else "targets"
    broken = [c["check"] for c in r["checks"] if not c["ok"]]
    console.print(
        f"checks: {len(r['checks']) - len(broken)} of {len(r['checks'])} hold"
        + "".join(f"\n  [red]FAILED[/]: {name}" for name in broken)
    )
    table = Table(title=title, title_justify="left")
    for col in ("measure", "measured", "target", ""):
        table.add_column(col)
    for t in r["targets"]:
        table.add_row(
            t["measure"], t["shown"], t["target"], "[green]met[/]" if t["met"] else "[red]MISSED[/]"
        )
    console.print(table)


def write_json(r: dict[str, Any], path: Path) -> None:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    path.write_bytes(orjson.dumps(clean(r), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")


def write_chart(r: dict[str, Any], path: Path) -> None:
    """Recipient deliveries/s against followers per post, the worker against the naive baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = r["sweep"]["ours"]
    naive = r["sweep"]["naive"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(
        [p["followers"] for p in ours], [p["recipients_per_s"] for p in ours], "o-", label="fanout-worker"
    )
    ax.plot(
        [p["followers"] for p in naive], [p["recipients_per_s"] for p in naive], "s--", label="naive baseline"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("followers per post")
    ax.set_ylabel("recipient deliveries / s")
    ax.set_title("Fan-out rate through real RabbitMQ (persistent, confirmed)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scaleout_checks(so: dict[str, Any]) -> list[dict[str, Any]]:
    """The scale-out rounds: every job acked once, every confirmed chunk in the queue, nothing lost."""
    rounds = [(name, so[name]) for name in ("one", "two", "half_load", "big") if name in so]
    rows = [
        (
            f"scale-out {name}: every job acked, every confirmed chunk in the queue",
            x["jobs_acked"] == x["jobs"] and x["delivered_to_queue"] == x["messages"],
        )
        for name, x in rounds
    ]
    rows.append(
        (
            "scale-out ceilings: every message in the queue",
            all(so[k]["ceiling"]["delivered"] == so[k]["ceiling"]["messages"] for k in ("one", "two")),
        )
    )
    rows.append(
        ("scale-out: nothing dead-lettered or retried", so["dead_lettered"] == 0 and so["retried"] == 0)
    )
    rows.append(
        (
            "scale-out half load: every post done",
            so["half_load"]["ordinary_done"] + so["half_load"]["large_posts_done"]
            == so["half_load"]["ordinary_posts"],
        )
    )
    if "big" in so:
        rows.append(
            ("scale-out big post: every recipient", so["big"]["recipients"] == so["big"]["followers"])
        )
    return [{"check": name, "ok": bool(ok)} for name, ok in rows]


def scaleout_targets(so: dict[str, Any]) -> list[dict[str, Any]]:
    h = so["half_load"]
    rows: list[tuple[str, float, str, Any, str]] = [
        (
            "one fan-out process vs one bare publisher",
            so["one"]["ratio"],
            "≥ 0.8×",
            lambda v: v >= 0.8,
            "{:.2f}×",
        ),
        (
            "two fan-out processes + tailer vs two bare publishers",
            so["two"]["ratio"],
            "≥ 0.85×",
            lambda v: v >= 0.85,
            "{:.2f}×",
        ),
        (
            f"ordinary p99 at half load, {h['star_followers']:,}-follower posts fanning out",
            h["latency_p99_ms"],
            "≤ 250 ms",
            lambda v: v <= 250,
            "{:.0f} ms",
        ),
        (
            f"RSS growth, fan-out processes ({h['star_followers']:,} posts)",
            max(h["rss_growth_mb"]),
            "≤ 64 MB",
            lambda v: v <= 64,
            "{:.1f} MB",
        ),
        (
            f"RSS growth, tailer ({h['star_followers']:,} posts)",
            h["tailer_rss_growth_mb"],
            "≤ 64 MB",
            lambda v: v <= 64,
            "{:.1f} MB",
        ),
    ]
    if "big" in so:
        b = so["big"]
        rows += [
            (
                f"RSS growth, fan-out processes ({b['followers']:,} post)",
                max(b["rss_growth_mb"]),
                "≤ 64 MB",
                lambda v: v <= 64,
                "{:.1f} MB",
            ),
            (
                f"RSS growth, tailer ({b['followers']:,} post)",
                b["tailer_rss_growth_mb"],
                "≤ 64 MB",
                lambda v: v <= 64,
                "{:.1f} MB",
            ),
            (
                f"one {b['followers']:,}-follower post, event → last confirm, 2 processes",
                b["seconds"],
                "≤ 2.5 s",
                lambda v: v <= 2.5,
                "{:.2f} s",
            ),
        ]
    return _target_rows(rows)


def print_scaleout(so: dict[str, Any], console: Console) -> None:
    one, two, h = so["one"], so["two"], so["half_load"]

    def rate(x: dict[str, Any]) -> str:
        return (
            f"{x['messages_per_s']:,.0f} msg/s vs {x['ceiling']['messages_per_s']:,.0f} bare "
            f"({x['messages']:,} msgs, mean {x['ceiling']['mean_bytes']:,.0f} B; "
            f"{x['fanout_cpu_us_per_message']:.0f} µs fan-out CPU/msg)"
        )

    rows = [
        ("1 fan-out process, jobs waiting", rate(one)),
        ("tailer + 2 fan-out processes", rate(two) + f", {two['posts_per_s']:,.0f} posts/s"),
        (
            f"half load {h['offered_posts_per_s']:,.0f} posts/s"
            f" + {h['star_posts']} × {h['star_followers']:,}",
            f"p50 / p99 / max {h['latency_p50_ms']:.0f} / {h['latency_p99_ms']:.0f} / "
            f"{h['latency_max_ms']:.0f} ms; bulk busy all window: {h['stars_outlasted_window']}",
        ),
        (
            "RSS growth fan-out processes / tailer",
            f"{', '.join(f'{g:.1f}' for g in h['rss_growth_mb'])} / {h['tailer_rss_growth_mb']:.1f} MB",
        ),
    ]
    if "big" in so:
        b = so["big"]
        rows += [
            (
                f"one post to {b['followers']:,}: {b['jobs']:,} ranges",
                f"{b['seconds']:.2f} s event → last confirm ({b['messages_per_s']:,.0f} msg/s)",
            ),
            (
                "  RSS growth fan-out processes / tailer",
                f"{', '.join(f'{g:.1f}' for g in b['rss_growth_mb'])} / {b['tailer_rss_growth_mb']:.1f} MB",
            ),
        ]
    console.print(
        _table("5. scale-out: tailer here, fan-out workers in their own processes, real job queues", rows)
    )
