"""Turn the benchmarks' figures into the goals table, BENCHMARKS.md and the PNG plot."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.common import percentile, window_series

BUDGET_GOAL = 0.95  # of the allowed rate (average-rate metric), with 0 429s
LATENCY_GOAL_MS = 10.0  # p50 enqueue → DELETE arrival
FINAL_SLACK_MS = 1000.0  # p50 to final ≤ confirm delay + this, one order alone
BATCH_GOAL_PER_S = 2000.0
RECORD_GOAL_BYTES = 2048  # 2 KiB per waiting order, and per final record
# The scheduler's bounds, as tests/test_scheduling.py asserts them:
JITTER_BUDGET_GOAL = 0.85  # of the allowed rate under 0..150 ms jitter, with 0 429s
URGENT_GOAL_INTERVALS = 1.0  # an urgent cancel waits at most one slot interval
BETA_SLACK_INTERVALS = 2  # beta beside two backlogs: at most its time alone + 2 intervals
# Issue 12's bounds, as tests/test_mass_cancel.py asserts them (request → last final record):
CANCEL_ALL_BOUND_S = 5.0  # 100 open orders on 5 symbols, one cancel-all
LIST_CONFIRM_BOUND_S = 10.0  # 30 per-order cancels confirmed through the lists
SMALL_RATIO = 0.01  # ratios below this get two significant digits: 0.0014, not 0.00


@dataclass(frozen=True)
class Goal:
    """One goal of issue 7, as a ratio of the measured value to its anchor."""

    name: str
    measured: str
    anchor: str
    ratio: float
    target: str
    met: bool

    @property
    def verdict(self) -> str:
        """`met` or `MISSED` (the benchmark ran; the figure is short of the goal)."""
        return "met" if self.met else "MISSED"


def goals(results: dict[str, Any]) -> list[Goal]:
    """The goals that the available results can be judged on."""
    out: list[Goal] = []
    if "budget" in results:
        budget = results["budget"]
        service = next(v for v in budget["variants"] if v["key"] == "service")
        allowed = budget["limit"] / budget["period_ms"] * 1000
        ratio = service["sent_average_ratio"]
        out.append(
            Goal(
                "(1) budget use, 4 workers",
                f"{ratio * allowed:.2f} DELETE/s average (first-burst metric "
                f"{_ratio(service['sent_ratio'])}), {service['rate_limited']} 429s, "
                f"window max {service['strict_window_max']}",
                f"allowed {allowed:g}/s ({budget['limit']}/{budget['period_ms'] / 1000:g}s)",
                ratio,
                f"≥ {BUDGET_GOAL} with 0 429s",
                ratio >= BUDGET_GOAL
                and service["rate_limited"] == 0
                and service["strict_window_max"] <= budget["limit"],
            )
        )
    if "pipeline" in results:
        latency = results["pipeline"]["latency"]
        p50 = latency["service_p50_ms"]
        out.append(
            Goal(
                "(2) added latency p50",
                f"{p50:.1f} ms enqueue → DELETE",
                f"{LATENCY_GOAL_MS:g} ms",
                p50 / LATENCY_GOAL_MS,
                "≤ 1",
                p50 <= LATENCY_GOAL_MS,
            )
        )
        final = results["pipeline"]["to_final"]
        anchor = final["confirm_delay_ms"] + FINAL_SLACK_MS
        p50 = final["single_p50_ms"]
        out.append(
            Goal(
                "(3) time to final p50, one order",
                f"{p50:.0f} ms",
                f"confirm {final['confirm_delay_ms']} ms + 1 s",
                p50 / anchor,
                "≤ 1",
                p50 <= anchor,
            )
        )
    if "producer" in results:
        producer = results["producer"]
        rate = producer["batch_per_s"]
        out.append(
            Goal(
                "(4) producer batch throughput",
                f"{rate:,.0f} req/s",
                f"{BATCH_GOAL_PER_S:,.0f} req/s",
                rate / BATCH_GOAL_PER_S,
                "≥ 1",
                rate >= BATCH_GOAL_PER_S,
            )
        )
        per_record = producer["waiting_order_bytes"]
        final_bytes = results.get("pipeline", {}).get("to_final", {}).get("final_record_bytes")
        measured = f"{per_record:.0f} B per waiting order"
        if final_bytes is not None:
            per_record = max(per_record, final_bytes)
            measured += f", {final_bytes:.0f} B per final record"
        out.append(
            Goal(
                "(4) Redis memory per order",
                measured,
                f"{RECORD_GOAL_BYTES} B",
                per_record / RECORD_GOAL_BYTES,
                "≤ 1",
                per_record <= RECORD_GOAL_BYTES,
            )
        )
    if "scheduling" in results:
        out += _scheduling_goals(results["scheduling"])
    if "mass_cancel" in results:
        out += _mass_cancel_goals(results["mass_cancel"])
    if "deadman" in results:
        out.append(_deadman_goal(results["deadman"]))
    if "failover" in results:
        out.append(_failover_goal(results["failover"]))
    return out


def _scheduling_goals(sched: dict[str, Any]) -> list[Goal]:
    """The scheduler's bounds (tests/test_scheduling.py), on benchmark 6's figures."""
    allowed = sched["limit"] / sched["period_ms"] * 1000
    interval = sched["slot_interval_ms"]
    jitter = sched["jitter"]
    learned = next(v for v in jitter["variants"] if v["key"] == "learned")
    use = learned["sent_average_ratio"]
    urgent = sched["urgent"]
    accounts = sched["accounts"]
    per_account = accounts["per_account"].values()
    alone_s = accounts["beta_alone_s"]
    bound_s = alone_s + BETA_SLACK_INTERVALS * interval / 1000
    return [
        Goal(
            f"(6a) budget use, {jitter['jitter_ms']} ms jitter",
            f"{use * allowed:.2f} DELETE/s average, {learned['rate_limited']} 429s, "
            f"window max {learned['strict_window_max']}",
            f"allowed {allowed:g}/s ({sched['limit']}/{sched['period_ms'] / 1000:g}s)",
            use,
            f"≥ {JITTER_BUDGET_GOAL} with 0 429s",
            use >= JITTER_BUDGET_GOAL
            and learned["rate_limited"] == 0
            and learned["strict_window_max"] <= sched["limit"],
        ),
        Goal(
            "(6b) urgent cancel behind a backlog",
            f"{urgent['urgent_wait_ms']} ms request → DELETE",
            f"slot interval {interval:g} ms",
            urgent["urgent_wait_intervals"],
            f"≤ {URGENT_GOAL_INTERVALS:g}",
            urgent["urgent_wait_intervals"] <= URGENT_GOAL_INTERVALS,
        ),
        Goal(
            "(6c) account beside two backlogs",
            f"beta {accounts['beta_contended_s']:.2f} s to final, "
            f"{sum(a['rate_limited'] for a in per_account)} 429s on any key",
            f"beta alone {alone_s:.2f} s",
            accounts["beta_ratio"],
            f"≤ {bound_s / alone_s:.2f} (alone + {BETA_SLACK_INTERVALS} slot intervals), 0 429s",
            accounts["beta_contended_s"] <= bound_s
            and all(a["rate_limited"] == 0 for a in per_account),
        ),
    ]


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table for the terminal."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


GOAL_HEADERS = ["goal", "measured", "anchor", "ratio", "target", "verdict"]


def goal_rows(items: list[Goal]) -> list[list[str]]:
    """Rows of the goals table."""
    return [
        [g.name, g.measured, g.anchor, _goal_ratio(g.ratio), g.target, g.verdict] for g in items
    ]


def _goal_ratio(value: float) -> str:
    """Two decimals; two significant digits below SMALL_RATIO, where decimals read 0.00."""
    return f"{value:.2g}" if 0 < abs(value) < SMALL_RATIO else f"{value:.2f}"


def _fine_ratio(value: float) -> str:
    """Three decimals, or two significant digits below SMALL_RATIO (0.0014, not 0.001)."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.2g}" if 0 < abs(value) < SMALL_RATIO else f"{value:.3f}"


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} ms"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def budget_rows(budget: dict[str, Any]) -> list[list[str]]:
    """One row per way of draining the backlog."""
    rows = []
    for v in budget["variants"]:
        rows.append(
            [
                v["label"],
                str(v["sends"]),
                str(v["accepted"]),
                str(v["rate_limited"]),
                f"{v['strict_window_max']} (limit {budget['limit']})",
                _ratio(v["sent_average_ratio"]),
                _ratio(v["sent_ratio"]),
                _ratio(v["accepted_average_ratio"]),
                str(v["not_cancelled"]),
                f"{v['span_s']:.1f} s",
            ]
        )
    return rows


BUDGET_HEADERS = [
    "variant",
    "DELETEs sent",
    "accepted",
    "429s",
    "strict-window max",
    "sent ÷ allowed (average rate)",
    "sent ÷ allowed (first burst, old)",
    "accepted ÷ allowed (average rate)",
    "orders left open",
    "first → last send",
]


def detail_rows(results: dict[str, Any]) -> list[list[str]]:
    """Every other figure as (benchmark, measure, value)."""
    rows: list[list[str]] = []
    if "pipeline" in results:
        lat = results["pipeline"]["latency"]
        n = lat["count"]
        rows += [
            ["(2) latency", f"cancel-worker enqueue → DELETE p50 / p99 (n={n})",
             f"{_ms(lat['service_p50_ms'])} / {_ms(lat['service_p99_ms'])}"],
            ["(2) latency", f"direct requests DELETE → arrival p50 / p99 (n={n})",
             f"{_ms(lat['direct_p50_ms'])} / {_ms(lat['direct_p99_ms'])}"],
            ["(2) latency", "cancel-worker minus direct, p50",
             _ms(lat["service_p50_ms"] - lat["direct_p50_ms"])],
        ]  # fmt: skip
        fin = results["pipeline"]["to_final"]
        rows += [
            ["(3) to final", "sandbox confirm delay / first poll after",
             f"{fin['confirm_delay_ms']} ms / {fin['poll_initial_delay_s'] * 1000:.0f} ms"],
            ["(3) to final", f"one order alone p50 / max (n={fin['single_count']})",
             f"{_ms(fin['single_p50_ms'])} / {_ms(fin['single_max_ms'])}"],
            ["(3) to final", f"{fin['burst_count']} at once p50 / p99 / max",
             f"{_ms(fin['burst_p50_ms'])} / {_ms(fin['burst_p99_ms'])} / "
             f"{_ms(fin['burst_max_ms'])}"],
            ["(3) to final", f"{fin['burst_count']} at once: status polls, 429s, window max",
             f"{fin['status_polls']}, {fin['status_rate_limited']}, "
             f"{fin['status_strict_window_max']} (limit {fin['status_limit']}/"
             f"{fin['status_period_ms'] / 1000:g}s)"],
        ]  # fmt: skip
    if "producer" in results:
        p = results["producer"]
        rows += [
            ["(4) producer", f"request_cancel, single calls (n={p['single_count']})",
             f"{p['single_per_s']:,.0f} req/s"],
            ["(4) producer", f"request_cancels, {p['batch_count']} batches of {p['batch_size']}",
             f"{p['batch_per_s']:,.0f} req/s"],
            ["(4) producer", f"Redis per waiting order, all of it (n={p['memory_items']})",
             f"{p['waiting_order_bytes']:.0f} B"],
            ["(4) producer", "  of which its entry in the line (MEMORY USAGE of the line ÷ n)",
             f"{p['line_entry_bytes']:.0f} B"],
            ["(4) producer", "  of which the sweeper's watch (MEMORY USAGE of cw:due ÷ n)",
             f"{p['watch_entry_bytes']:.0f} B"],
            ["(4) producer", "  of which the QUEUED record (key + event + counters)",
             f"{p['record_bytes']:.0f} B"],
            ["(4) producer", "MEMORY USAGE of one QUEUED record key",
             f"{p['record_key_bytes']} B"],
        ]  # fmt: skip
    if "pipeline" in results:
        fin = results["pipeline"]["to_final"]
        rows.append(
            ["(4) producer", "MEMORY USAGE of a final (CANCELLED) record key, mean",
             f"{fin['final_record_bytes']:.0f} B"]
        )  # fmt: skip
        fp = results["pipeline"]["footprint"]
        for queue, threads in (("cancels", 4), ("polls", 8)):
            rows.append(
                ["(5) footprint", f"{queue} worker RSS (-c {threads}), idle / after load",
                 f"{fp['idle_kb'][queue] / 1024:.1f} MiB / {fp['loaded_kb'][queue] / 1024:.1f} MiB"]
            )  # fmt: skip
    return rows


DETAIL_HEADERS = ["benchmark", "measure", "value"]

JITTER_HEADERS = [
    "margin",
    "DELETEs sent",
    "429s (cancel / status)",
    "strict-window max",
    "budget use (average rate)",
    "÷ anchor",
    "request → last final",
    "÷ anchor",
    "margin at the end",
    "largest span seen",
]


def _jitter_variants(sched: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(anchor, learned) variants of the jitter section."""
    variants = {v["key"]: v for v in sched["jitter"]["variants"]}
    return variants["fixed"], variants["learned"]


def jitter_rows(sched: dict[str, Any]) -> list[list[str]]:
    """(6a): each margin variant, with ratios to the fixed-margin anchor."""
    anchor, _ = _jitter_variants(sched)
    rows = []
    for v in sched["jitter"]["variants"]:
        margin = "n/a" if v["margin_ms"] is None else f"{v['margin_ms']} ms"
        rows.append(
            [
                v["label"],
                str(v["sends"]),
                f"{v['rate_limited']} / {v['status_rate_limited']}",
                f"{v['strict_window_max']} (limit {sched['limit']})",
                _ratio(v["sent_average_ratio"]),
                _ratio(v["sent_average_ratio"] / anchor["sent_average_ratio"]),
                f"{v['drain_s']:.2f} s",
                _ratio(v["drain_s"] / anchor["drain_s"]),
                margin,
                f"{v['largest_span_ms']} ms",
            ]
        )
    return rows


URGENT_HEADERS = ["measure", "value"]


def urgent_rows(sched: dict[str, Any]) -> list[list[str]]:
    """(6b): the urgent cancel's wait beside the normal one requested with it."""
    u = sched["urgent"]
    interval = sched["slot_interval_ms"]
    return [
        ["normal backlog; of it at the sandbox when the two were requested",
         f"{u['backlog']}; {u['sent_before_request']}"],
        ["urgent cancel: request → DELETE at the sandbox", f"{u['urgent_wait_ms']} ms"],
        ["normal cancel requested with it (FIFO anchor): request → DELETE",
         f"{u['normal_wait_ms']} ms"],
        ["urgent ÷ normal", _ratio(u["urgent_over_normal"])],
        [f"urgent ÷ slot interval ({interval:g} ms = period ÷ limit)",
         _ratio(u["urgent_wait_intervals"])],
        ["backlog cancels the urgent one went ahead of", str(u["overtook"])],
        ["429s; strict-window max of the whole drain",
         f"{u['rate_limited']}; {u['strict_window_max']} (limit {sched['limit']})"],
    ]  # fmt: skip


ACCOUNT_HEADERS = [
    "account",
    "backlog",
    "DELETEs sent",
    "429s",
    "strict-window max (own key)",
    "request → last final",
]


def account_rows(sched: dict[str, Any]) -> list[list[str]]:
    """(6c): each account's drain beside the others, then beta alone (the anchor)."""
    acc = sched["accounts"]
    rows = [
        [
            name,
            str(a["backlog"]),
            str(a["sends"]),
            str(a["rate_limited"]),
            f"{a['strict_window_max']} (limit {sched['limit']})",
            f"{a['to_last_final_s']:.2f} s",
        ]
        for name, a in acc["per_account"].items()
    ]
    beta = acc["backlogs"]["beta"]
    rows.append(
        ["beta alone (anchor)", str(beta), str(beta), "", "", f"{acc['beta_alone_s']:.2f} s"]
    )
    rows.append(["beta beside the others ÷ beta alone", "", "", "", "", _ratio(acc["beta_ratio"])])
    return rows


def scheduling_rows(sched: dict[str, Any]) -> list[list[str]]:
    """Benchmark 6 as (section, measure, value) rows, for the terminal."""
    anchor, learned = _jitter_variants(sched)
    rows: list[list[str]] = []
    for v in (anchor, learned):
        rows.append(
            [
                "(6a) jitter",
                v["label"],
                f"{v['rate_limited']} 429s, window max {v['strict_window_max']}, "
                f"use {_ratio(v['sent_average_ratio'])}, {v['drain_s']:.2f} s, "
                f"margin {v['margin_ms']} ms",
            ]
        )
    rows.append(
        [
            "(6a) jitter",
            "learned ÷ fixed: budget use / drain time",
            f"{_ratio(learned['sent_average_ratio'] / anchor['sent_average_ratio'])} / "
            f"{_ratio(learned['drain_s'] / anchor['drain_s'])}",
        ]
    )
    rows += [["(6b) urgent", measure, value] for measure, value in urgent_rows(sched)]
    acc = sched["accounts"]
    for name, a in acc["per_account"].items():
        rows.append(
            [
                "(6c) accounts",
                f"{name}: backlog {a['backlog']}, all three at once",
                f"{a['sends']} sent, {a['rate_limited']} 429s, window max "
                f"{a['strict_window_max']}, {a['to_last_final_s']:.2f} s to last final",
            ]
        )
    rows.append(
        [
            "(6c) accounts",
            "beta beside the others ÷ beta alone (anchor)",
            f"{acc['beta_contended_s']:.2f} s ÷ {acc['beta_alone_s']:.2f} s = "
            f"{_ratio(acc['beta_ratio'])}",
        ]
    )
    return rows


CONDITION_HEADERS = [
    "benchmark",
    "measured",
    "took",
    "load average (1 min) before / after",
    "other Celery / pytest processes at start",
]


def machine() -> dict[str, str]:
    """What this machine is: CPU, cores, RAM, OS, Python, Redis, Celery, date."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        cpu = found[1].strip() if found else cpu
    ram = "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        found = re.search(r"^MemTotal:\s*(\d+) kB", meminfo.read_text(), re.M)
        ram = f"{int(found[1]) / 1024**2:.1f} GiB" if found else ram
    redis_version = "unknown"
    binary = shutil.which("redis-server")
    if binary:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        found = re.search(r"v=(\S+)", out.stdout)
        redis_version = found[1] if found else out.stdout.strip()
    return {
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "RAM": ram,
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Redis": redis_version,
        "Celery / kombu / redis-py": f"{version('celery')} / {version('kombu')} / "
        f"{version('redis')}",
        "date": utc_now(),
    }


def utc_now() -> str:
    """The date and time as the report shows them."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def other_processes() -> int:
    """Celery processes and pytest runs on this machine right now (none of them ours).

    Called between benchmarks, when this run has none of its own: any found belong to
    other work sharing the CPU, which skews latency and throughput figures.
    """
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(r"-m celery |/celery |pytest", line):
            count += 1
    return count


def plot(results: dict[str, Any], path: Path) -> None:
    """Requests per window against the limit, one panel per benchmark that has a series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (key, draw)
        for key, draw in (
            ("budget", _plot_budget),
            ("pipeline", _plot_status),
            ("scheduling", _plot_jitter),
            ("scheduling", _plot_accounts),
            ("mass_cancel", _plot_finals),
            ("deadman", _plot_deadman),
            ("failover", _plot_failover),
        )
        if key in results
    ]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, 3.4 * max(1, len(panels))))
    axes_list = list(axes) if len(panels) > 1 else [axes]
    for ax, (key, draw) in zip(axes_list, panels, strict=False):
        ax.set_ylabel("requests per window")  # a panel may name its own
        draw(ax, results[key])
        if key != "failover":  # its y axis is the failover's number, not a count
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _step(ax: Any, arrivals_ms: list[int], period_ms: int, **style: Any) -> None:
    """Arrivals in the trailing window, at each arrival (seconds on x)."""
    series = window_series(arrivals_ms, period_ms)
    ax.step([t / 1000 for t, _ in series], [n for _, n in series], where="post", **style)


def _plot_budget(ax: Any, budget: dict[str, Any]) -> None:
    period = budget["period_ms"]
    for v in budget["variants"]:
        ours = v["key"] == "service"
        _step(
            ax, v["arrivals_ms"], period,
            label=f"{v['label']}: max {v['strict_window_max']}, {v['rate_limited']} 429s",
            linewidth=2.0 if ours else 1.2, zorder=3 if ours else 2,
        )  # fmt: skip
    ax.axhline(budget["limit"], color="black", linestyle="--", label="exchange limit")
    ax.set_title(
        f"(1) DELETEs in the last {period / 1000:g} s, backlog of {budget['backlog']}, "
        f"{budget['workers']} worker processes"
    )
    ax.set_xlabel("seconds since the first DELETE")


def _plot_status(ax: Any, pipeline: dict[str, Any]) -> None:
    fin = pipeline["to_final"]
    _step(
        ax, fin["status_arrivals_ms"], fin["status_period_ms"],
        label=f"cancel-worker status polls: max {fin['status_strict_window_max']}",
    )  # fmt: skip
    ax.axhline(fin["status_limit"], color="black", linestyle="--", label="exchange limit")
    ax.set_title(
        f"(3) status GETs in the last {fin['status_period_ms'] / 1000:g} s, "
        f"{fin['burst_count']} orders awaiting confirmation at once"
    )
    ax.set_xlabel("seconds since the request")


def _plot_jitter(ax: Any, sched: dict[str, Any]) -> None:
    period = sched["period_ms"]
    jitter = sched["jitter"]
    for v in jitter["variants"]:
        _step(
            ax, v["arrivals_ms"], period,
            label=f"{v['label']}: max {v['strict_window_max']}, {v['rate_limited']} 429s",
            linewidth=2.0 if v["key"] == "learned" else 1.2,
        )  # fmt: skip
    ax.axhline(sched["limit"], color="black", linestyle="--", label="exchange limit")
    ax.set_title(
        f"(6a) DELETEs in the last {period / 1000:g} s at the sandbox, 0..{jitter['jitter_ms']} "
        f"ms network jitter, backlog of {jitter['backlog']}"
    )
    ax.set_xlabel("seconds since the request")


def _plot_accounts(ax: Any, sched: dict[str, Any]) -> None:
    period = sched["period_ms"]
    for name, a in sched["accounts"]["per_account"].items():
        _step(
            ax, a["arrivals_ms"], period,
            label=f"{name} (backlog {a['backlog']}): max {a['strict_window_max']}, "
            f"{a['rate_limited']} 429s",
        )  # fmt: skip
    ax.axhline(sched["limit"], color="black", linestyle="--", label="exchange limit, per key")
    ax.set_title(f"(6c) DELETEs per API key in the last {period / 1000:g} s, three accounts")
    ax.set_xlabel("seconds since the requests")


def markdown(run: dict[str, Any], *, plot_link: str) -> str:
    """BENCHMARKS.md from a run: the machine, the goals, every figure, the plot, the method."""
    results: dict[str, Any] = run["results"]
    errors: dict[str, str] = run["errors"]
    durations: dict[str, float] = run["durations"]
    smoke: bool = run["smoke"]
    info: dict[str, str] = run["machine"]
    total = sum(durations.values())
    dates = {c.get("date", "not recorded") for c in run["conditions"].values()}
    condition_rows = [
        [
            name,
            c.get("date", "not recorded" if len(dates) > 1 else info["date"]),
            f"{durations.get(name, math.nan):.0f} s",
            f"{c['load_before']:.2f} / {c['load_after']:.2f}",
            f"{c['others']:.0f}",
        ]
        for name, c in run["conditions"].items()
    ]
    parts = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks`) on the machine below, against the "
        "sandbox exchange with scaled limits; every figure here was measured by "
        + ("that run " if len(dates) == 1 else "those runs ")
        + f"(raw figures in `{Path(plot_link).with_name('results.json')}`)"
        + (" (SMOKE run: small samples, not for comparison)." if smoke else "."),
        (
            "The run took"
            if len(dates) == 1
            else "Measured in more than one run on this machine (each benchmark's date under "
            "Run conditions, where it was recorded; the machine's date is the first run's), "
            "which together took"
        )
        + f" {total:.0f} s ("
        + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations.items())
        + ").",
        "",
        md_table(["machine", ""], [[k, v] for k, v in info.items()]),
        "",
        "Run conditions (the machine may be shared: other Celery processes or pytest runs "
        "beside a benchmark skew its latency and throughput figures):",
        "",
        md_table(CONDITION_HEADERS, condition_rows),
        "",
        "## Goals",
        "",
        "Goals (1)-(4) are issue 7's; (6a)-(6c) are the budget scheduler's bounds as "
        "tests/test_scheduling.py asserts them; (7a)-(7b) are issue 12's, judged on the "
        "bounds tests/test_mass_cancel.py asserts; (8) is the dead man's switch's (p99 "
        "trigger delay ≤ 1 s); (9) is what tests/test_failover.py asserts of a lost primary "
        "(every cancel carried out once, no 429), with its times beside Sentinel's own. "
        "Ratio = measured ÷ anchor.",
        "",
        md_table(GOAL_HEADERS, goal_rows(goals(results))),
        "",
    ]
    if errors:
        parts += ["## Benchmarks that failed", ""]
        parts += [f"- `{name}`: {message}" for name, message in errors.items()]
        parts.append("")
    if "budget" in results:
        parts += _budget_section(results["budget"])
    if detail_rows(results):  # none when only later benchmarks ran (--only)
        parts += [
            "## (2)-(5) Latency, time to final, producer, footprint",
            "",
            md_table(DETAIL_HEADERS, detail_rows(results)),
            "",
        ]
    if "scheduling" in results:
        parts += _scheduling_section(results["scheduling"])
    if "mass_cancel" in results:
        parts += _mass_cancel_section(results["mass_cancel"])
    if "deadman" in results:
        parts += _deadman_section(results["deadman"])
    if "failover" in results:
        parts += _failover_section(results["failover"])
    parts += [
        f"![requests per window against the limit]({plot_link})",
        "",
        *METHOD,
    ]
    return "\n".join(parts)


def _budget_section(b: dict[str, Any]) -> list[str]:
    """(1): the backlog drained by cancel-worker and by plain Celery, and the two metrics."""
    limit, period_s = b["limit"], b["period_ms"] / 1000
    return [
        "## (1) Budget use with a backlog",
        "",
        f"A backlog of {b['backlog']} cancels requested at once; {b['workers']} worker "
        f"processes (threads pool, -c {b['concurrency']}); sandbox limit {limit} "
        f"DELETEs per {period_s:g} s, strictly sliding; a fresh sandbox "
        "and an emptied Redis per variant. The plain Celery task sends once and does "
        "not retry a 429, so a refused cancel leaves its order open.",
        "",
        md_table(BUDGET_HEADERS, budget_rows(b)),
        "",
        "Two metrics of budget use, both ÷ the allowed rate limit / period:",
        "",
        "- **average rate** (the goal's, and `tests.support.budget_use`): (sends - 1) / "
        "(last - first arrival). It is the rate the budget was spent at over the drain, "
        "whatever the shape of its first window.",
        f"- **first burst** (the old one): (sends - {limit}) / (last - first arrival). It "
        f"assumes a limiter that fires a full burst of {limit} at the first instant, then "
        f"{limit} per period, and discounts that burst. The scheduler does not do that: it "
        "keeps the last slot of each window for urgent work and gives it to a normal job "
        "only within one slot interval (period ÷ limit) of the window freeing, so its "
        f"drain starts with {limit - 1} sends, not {limit}, and each window's last slot "
        "goes one interval before the window frees. Same long-run rate, but the "
        "first-burst metric reads it as slower, by more the shorter the backlog. "
        "Both read a drain of a few windows with some bias depending on where the last "
        "send falls in its window; the longer the backlog, the closer they agree.",
        "- accepted ÷ allowed is the average rate of the DELETEs the sandbox accepted "
        "(each order's `CANCELLATION_RAISED` time): what the budget actually bought.",
        "",
    ]


def _scheduling_section(sched: dict[str, Any]) -> list[str]:
    """(6a)-(6c): the scheduler under jitter, with urgent work, and with three accounts."""
    anchor, learned = _jitter_variants(sched)
    jitter = sched["jitter"]
    acc = sched["accounts"]
    limit, period_s = sched["limit"], sched["period_ms"] / 1000
    return [
        "## (6) The budget scheduler: jitter, urgent work, accounts",
        "",
        f"Each section: {sched['cancel_workers']} `celery -A worker worker -Q cancels` "
        f"processes (-c {sched['concurrency']}) and 1 for polls, accounts default, alpha "
        f"and beta (one API key each), sandbox limits {limit}/{period_s:g}s cancels and "
        f"20/{period_s:g}s status per key, confirm delay {sched['confirm_delay_ms']} ms, "
        "every other setting at its default. Each figure is beside an anchor measured "
        "in the same run.",
        "",
        f"### (6a) A network that varies: 0..{jitter['jitter_ms']} ms before the exchange",
        "",
        f"Every request reaches the sandbox's limiter after a seeded random 0.."
        f"{jitter['jitter_ms']} ms delay (`latency_jitter_ms`; arrival stamps include "
        f"it). A backlog of {jitter['backlog']} cancels, drained with the margin the "
        "scheduler learns from response spans (defaults: floor 50 ms, ceiling 2 s) beside "
        "the anchor, the old fixed 50 ms margin (`CANCEL_WORKER_RATE_MARGIN_MS=50`, "
        "`CANCEL_WORKER_RATE_MARGIN_MAX_MS=50`). Each variant: fresh Redis, a fresh sandbox "
        "with the same seed (the same sequence of delays), its own fleet. Drain = request → "
        "the last final record. The margin is Redis `cw:net:margin` after the drain (what "
        "`cancel-worker limits` shows); the span is a request's time from taking its turn "
        "to the answer.",
        "",
        md_table(JITTER_HEADERS, jitter_rows(sched)),
        "",
        _jitter_verdict(sched, anchor, learned),
        "",
        "### (6b) An urgent cancel behind a backlog",
        "",
        f"{sched['urgent']['backlog']} normal cancels requested at once; as soon as "
        f"{limit - 1} of them (limit - 1, the first burst) were under way, one urgent "
        "cancel and, right after it, one "
        "normal cancel (the first-come-first-served anchor) were requested. Wait = "
        "request → the sandbox accepting its DELETE (the order history's "
        "`CANCELLATION_RAISED` time, same clock).",
        "",
        md_table(URGENT_HEADERS, urgent_rows(sched)),
        "",
        "### (6c) Three accounts at once",
        "",
        "Backlogs on default, alpha and beta requested together (beta last, so both other "
        "backlogs are already in line), each account with its own key and budgets. The "
        f"anchor: beta's same {acc['backlogs']['beta']} cancels requested with nothing "
        "else waiting, earlier in the same run. Time = beta's request → its last final "
        "record; it includes the confirm delay and the first poll "
        "(`CANCEL_WORKER_POLL_INITIAL_DELAY_S`, 0.5 s).",
        "",
        md_table(ACCOUNT_HEADERS, account_rows(sched)),
        "",
        _beta_note(sched),
        "",
    ]


def _beta_note(sched: dict[str, Any]) -> str:
    """Where beta's extra time beside the other backlogs went, from this run's arrivals."""
    per_account = sched["accounts"]["per_account"]
    first_ms = min(per_account["beta"]["arrivals_ms"], default=0)
    ahead = sum(
        1
        for name, a in per_account.items()
        if name != "beta"
        for at in a["arrivals_ms"]
        if at < first_ms
    )
    threads = sched["cancel_workers"] * sched["concurrency"]
    return (
        f"Beta's own budget was free throughout; its first DELETE reached the sandbox "
        f"{first_ms} ms after the requests, behind {_count(ahead, 'DELETE')} of default "
        "and alpha whose turns were handed out a moment earlier. Turns of every account go "
        f"through the one `cancels` queue to the fleet's {threads} worker threads, first "
        "in, first out, so an account's first turn waits for the turns released just "
        "before it (up to a window's worth per other account), and its status reads "
        "likewise share the `polls` worker."
    )


def _count(n: int, noun: str) -> str:
    """`1 DELETE`, `2 DELETEs`."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _jitter_verdict(sched: dict[str, Any], anchor: dict[str, Any], learned: dict[str, Any]) -> str:
    """What (6a) shows, in words that follow this run's figures."""
    period_ms, limit = sched["period_ms"], sched["limit"]
    margin = learned["margin_ms"] or 0
    text = (
        f"The learned margin ({margin} ms) is the largest span seen "
        f"({learned['largest_span_ms']} ms) times 1.2, so a window counts "
        f"{period_ms + margin} ms instead of {period_ms + (anchor['margin_ms'] or 0)} ms: "
        "a send's arrival may drift by up to the network's delay and still not put "
        f"{limit + 1} arrivals in one {period_ms / 1000:g} s window at the exchange. "
    )
    if anchor["rate_limited"] or anchor["strict_window_max"] > limit:
        return text + (
            f"With the fixed margin the exchange saw up to {anchor['strict_window_max']} "
            f"in one window and answered 429 to {_count(anchor['rate_limited'], 'DELETE')} "
            "(a refused DELETE spends an arrival, pauses the budget for a window and goes "
            f"again); with the learned one, {_count(learned['rate_limited'], '429')} and a "
            f"window max of {learned['strict_window_max']}."
        )
    return text + (
        "In this run the fixed margin drew no 429 either: the delays never pushed "
        f"{limit + 1} arrivals into one window. The learned margin's "
        "cost is the longer window (budget use and drain time ÷ anchor above); its gain "
        "is the bound, which holds whatever the delays do."
    )


# ---- (7) cancel-all and the order lists (issue 12) ---------------------------------------


def _seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f} s"


def _minutes(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value / 60:.1f} min"


def _total_429s(run: dict[str, Any]) -> int:
    return sum(run["rate_limited"].values())


def _matches(run: dict[str, Any]) -> str:
    return f"{run['match_truth']}/{run['orders']}"


def _cancel_all_anchor(mc: dict[str, Any]) -> tuple[str, float]:
    """(7a)'s anchor in words, and the ratio to it: the extrapolated per-order time when the
    anchor run lasted long enough to measure a rate, else the time computed from the limit."""
    ca = mc["cancel_all"]
    rate = ca["anchor_rate_per_min"]
    if not math.isnan(rate):
        return (
            f"per order ≈ {_minutes(ca['anchor_extrapolated_s'])}, extrapolated: "
            f"{ca['orders']} ÷ {rate:.2f} DELETE/min measured on {ca['anchor_orders']}",
            ca["over_extrapolated"],
        )
    return (
        f"per order {_minutes(ca['anchor_analytic_s'])}, computed: {ca['orders']} orders at "
        f"{mc['limits']['cancel']} (the {ca['anchor_orders']} measured spanned no window)",
        ca["over_analytic"],
    )


def _mass_cancel_goals(mc: dict[str, Any]) -> list[Goal]:
    """Issue 12's figures, on the bounds tests/test_mass_cancel.py asserts."""
    runs = mc["runs"]
    ca, lists, anchor = runs["cancel_all"], runs["lists"], runs["status_only"]
    calls = ca["calls"]
    anchor_words, ratio = _cancel_all_anchor(mc)
    return [
        Goal(
            f"(7a) cancel-all, {ca['orders']} orders on {ca['symbols']} symbols",
            f"{_seconds(ca['to_last_final_s'])} request → last final; {calls['cancel_all']} "
            f"cancel-all, {calls['closed'] + calls['open']} list, {calls['status']} status, "
            f"{calls['cancel']} DELETE calls; {_total_429s(ca)} 429s; {_matches(ca)} records "
            "= exchange",
            anchor_words,
            ratio,
            f"≤ {CANCEL_ALL_BOUND_S:g} s, 0 429s, every record = exchange",
            ca["to_last_final_s"] <= CANCEL_ALL_BOUND_S
            and _total_429s(ca) == 0
            and ca["match_truth"] == ca["orders"],
        ),
        Goal(
            f"(7b) {lists['orders']} cancels confirmed through the lists",
            f"{_seconds(lists['to_last_final_s'])} request → last final; "
            f"{lists['calls']['status']} status, "
            f"{lists['calls']['closed'] + lists['calls']['open']} list calls; "
            f"{_total_429s(lists)} 429s; {_matches(lists)} records = exchange",
            f"status reads only (lists refused) {_seconds(anchor['to_last_final_s'])}, "
            f"{anchor['calls']['status']} status calls",
            mc["lists"]["over_anchor"],
            f"≤ {LIST_CONFIRM_BOUND_S:g} s, 0 429s, every record = exchange",
            lists["to_last_final_s"] <= LIST_CONFIRM_BOUND_S
            and _total_429s(lists) == 0
            and lists["match_truth"] == lists["orders"],
        ),
    ]


MASS_RUN_HEADERS = [
    "run (measured)",
    "orders",
    "request → last final",
    "cancel-all calls",
    "DELETEs",
    "status reads",
    "list calls (closed / open)",
    "429s",
    "records = exchange",
    "final states",
]


def _run_row(label: str, run: dict[str, Any]) -> list[str]:
    calls = run["calls"]
    states = ", ".join(f"{n} {state}" for state, n in sorted(run["final_states"].items()))
    limited = run["rate_limited"]
    where = ", ".join(f"{n} {name}" for name, n in limited.items() if n)
    return [
        label,
        str(run["orders"]),
        _seconds(run["to_last_final_s"]),
        str(calls["cancel_all"]),
        str(calls["cancel"]),
        str(calls["status"]),
        f"{calls['closed']} / {calls['open']}",
        f"{_total_429s(run)}" + (f" ({where})" if where else ""),
        _matches(run),
        states,
    ]


def mass_run_rows(mc: dict[str, Any]) -> list[list[str]]:
    """(7a): the cancel-all run and the per-order run it is compared with."""
    runs = mc["runs"]
    return [
        _run_row("cancel-all for the account", runs["cancel_all"]),
        _run_row("per-order cancels (anchor)", runs["per_order"]),
    ]


ANCHOR_HEADERS = ["measure", "value", "measured or computed"]


def cancel_all_anchor_rows(mc: dict[str, Any]) -> list[list[str]]:
    """(7a): the per-order anchor for the cancel-all's order count, and the ratios to it."""
    ca = mc["cancel_all"]
    n, limit = ca["orders"], mc["limits"]["cancel"]
    rate = ca["anchor_rate_per_min"]
    return [
        [f"per order, {ca['anchor_orders']} orders: request → last final",
         _seconds(ca["anchor_measured_s"]), "measured"],
        [f"per order: DELETE rate, first → last DELETE at the sandbox ({ca['anchor_orders']} "
         "orders)", "n/a (the DELETEs spanned less than one window)" if math.isnan(rate)
         else f"{rate:.2f} DELETE/min", "measured"],
        [f"per order, {n} orders: {n} ÷ the measured DELETE rate",
         "n/a" if math.isnan(rate) else f"≈ {_minutes(ca['anchor_extrapolated_s'])}",
         "computed: extrapolated from the measured rate"],
        [f"per order, {n} orders: {n} orders at the limit, {limit}",
         _minutes(ca["anchor_analytic_s"]), "computed from the limit"],
        [f"cancel-all ({_seconds(ca['to_last_final_s'])}) ÷ per order extrapolated",
         _fine_ratio(ca["over_extrapolated"]), "ratio"],
        [f"cancel-all ({_seconds(ca['to_last_final_s'])}) ÷ per order from the limit",
         _fine_ratio(ca["over_analytic"]), "ratio"],
    ]  # fmt: skip


LIST_HEADERS = [
    "confirmation (measured)",
    "orders",
    "request → last final",
    "÷ anchor",
    "status reads",
    "÷ anchor",
    "list calls (closed + open)",
    "429s",
    "records = exchange",
]


def list_rows(mc: dict[str, Any]) -> list[list[str]]:
    """(7b): confirmation through the lists beside status reads only (the anchor)."""
    runs = mc["runs"]
    anchor = runs["status_only"]
    rows = []
    for label, run in (
        ("list passes first, a status read behind (the worker)", runs["lists"]),
        ("status reads only: lists refused (anchor)", anchor),
    ):
        limited = run["rate_limited"]
        where = ", ".join(f"{n} {name}" for name, n in limited.items() if n)
        status = run["calls"]["status"]
        rows.append(
            [
                label,
                str(run["orders"]),
                _seconds(run["to_last_final_s"]),
                _fine_ratio(run["to_last_final_s"] / anchor["to_last_final_s"]),
                str(status),
                _fine_ratio(status / anchor["calls"]["status"]),
                str(run["calls"]["closed"] + run["calls"]["open"]),
                f"{_total_429s(run)}" + (f" ({where})" if where else ""),
                _matches(run),
            ]
        )
    return rows


def mass_cancel_rows(mc: dict[str, Any]) -> list[list[str]]:
    """Benchmark 7 as (section, measure, value) rows, for the terminal."""
    rows: list[list[str]] = []
    for row in mass_run_rows(mc):
        rows.append(
            ["(7a) cancel-all", row[0], f"{row[1]} orders, {row[2]} to last final, calls: "
             f"{row[3]} cancel-all, {row[4]} DELETE, {row[5]} status, {row[6]} lists; "
             f"{row[7]} 429s; {row[8]} = exchange"]
        )  # fmt: skip
    rows += [["(7a) cancel-all", f"{m} ({how})", v] for m, v, how in cancel_all_anchor_rows(mc)]
    for row in list_rows(mc):
        rows.append(
            ["(7b) lists", row[0], f"{row[1]} orders, {row[2]} to last final (÷ anchor "
             f"{row[3]}), {row[4]} status reads (÷ anchor {row[5]}), {row[6]} list calls, "
             f"{row[7]} 429s, {row[8]} = exchange"]
        )  # fmt: skip
    return rows


def _mass_cancel_section(mc: dict[str, Any]) -> list[str]:
    """(7a)-(7b): cancel-all vs per-order cancels; list confirmation vs status reads."""
    limits = mc["limits"]
    runs = mc["runs"]
    ca, per_order = runs["cancel_all"], runs["per_order"]
    lists, anchor = runs["lists"], runs["status_only"]
    return [
        "## (7) Cancel-all and confirmation through the order lists (issue 12)",
        "",
        f"Every run at the exchange's real limits per key (cancel {limits['cancel']}, status "
        f"{limits['status']}, cancel-all {limits['cancel_all']}, Open and Closed Orders "
        f"{limits['list']} each) on a sandbox that confirms a cancel "
        f"{mc['confirm_delay_ms']} ms after accepting it and lets "
        f"{mc['fill_race_rate']:.0%} of cancels lose the race to a fill (seed {mc['seed']}). "
        "Each run has a process, a redis-server, a sandbox, an API key and an account of its "
        "own, and two Celery workers that serve only that account (`-Q cancels` and `-Q "
        "polls`, -c 4 each, every other setting at its default), so no run sees another's "
        "budgets or lines. Time = the request → the last order's final record (`final_at`). "
        "Calls = requests of the run's key reaching the sandbox after the request, 429s "
        "included. Records = exchange: each order's final record has the state the sandbox "
        "shows for it.",
        "",
        f"### (7a) Cancel-all vs per-order cancels, {ca['orders']} open orders on "
        f"{ca['symbols']} symbols",
        "",
        f"One `request_cancel_all` for the account (no symbol). The anchor is the per-order "
        f"path, `request_cancels`, at {limits['cancel']}: all {ca['orders']} per order would "
        f"take about {_minutes(mc['cancel_all']['anchor_analytic_s'])} of the run, so "
        f"{per_order['orders']} orders (spread over the same symbols) are cancelled and "
        "measured, and the figure for all of them is computed from that run's DELETE rate "
        "(and, beside it, from the limit alone). The table says which figure is which.",
        "",
        md_table(MASS_RUN_HEADERS, mass_run_rows(mc)),
        "",
        md_table(ANCHOR_HEADERS, cancel_all_anchor_rows(mc)),
        "",
        f"### (7b) {lists['orders']} per-order cancels confirmed through the lists vs status "
        "reads only",
        "",
        f"The DELETE limit raised to {limits['fast_cancel']} on the sandbox and the workers, "
        f"so DELETEs are not the bottleneck; status at {limits['status']}, each list at "
        f"{limits['list']}. {lists['orders']} orders of one symbol, requested at once. The "
        "worker confirms three or more awaiting orders of an account through Closed Orders "
        "passes (50 orders a call), with a status read behind each order for what the lists "
        "do not settle.",
        "",
        md_table(LIST_HEADERS, list_rows(mc)),
        "",
        _status_anchor_note(mc, anchor),
        "",
    ]


def _status_anchor_note(mc: dict[str, Any], anchor: dict[str, Any]) -> str:
    """How (7b)'s anchor was made, and where its time went, from this run's arrivals."""
    limits, ls = mc["limits"], mc["lists"]
    status = anchor["arrivals_ms"]["status"]
    period_ms = mc["status_period_ms"]
    backstop_ms = ls["backstop_s"] * 1000
    at_once = sum(1 for at in status if at < backstop_ms)
    late = sum(1 for at in status if at >= period_ms)
    where = ""
    if status:
        where = (
            f" In this anchor, {at_once} of its {len(status)} status reads reached the sandbox "
            f"before the {backstop_ms / 1000:g} s wait was up (an order that finds fewer than "
            f"3 awaiting gets its read at once), {late} only after the first status window "
            f"({limits['status']}) had passed, and the last at {status[-1] / 1000:.1f} s."
        )
    if ls["status_floor_s"] > 0:
        where += (
            f" Status reads alone need at least {ls['status_floor_s']:g} s for "
            f"{anchor['orders']} orders at {limits['status']} (computed from the limit)."
        )
    return (
        "**How the anchor was made.** worker/ has no switch for status reads only, so the "
        "anchor's sandbox allows one list call per hour per key "
        f"(`list_limit={limits['no_list']}`) and the benchmark spends that call (and the Open "
        "Orders one) before the request: every list pass the workers try is refused with a "
        "429, which pauses their list budget for a window, and the status read behind each "
        "order does the work. The workers keep the measured run's list budgets "
        f"({limits['list']}): with a worker list budget of {limits['no_list']} as well, the "
        "worker would put every status read behind a pass "
        f"{ls['no_list_backstop_s'] / 3600:g} h after its DELETE (worker/confirmation.py: "
        "max(3 s, twice the closed-orders slot interval)) and the anchor would not end. So "
        f"the anchor pays the worker's {ls['backstop_s']:g} s wait behind a refused pass, which "
        "a design with no lists would not." + where
    )


def _plot_finals(ax: Any, mc: dict[str, Any]) -> None:
    """Share of each run's orders with a final record, against log time since the request."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    runs = mc["runs"]
    for key, label, style, color in (
        ("cancel_all", "(7a) cancel-all", "-", "tab:blue"),
        ("per_order", "(7a) per-order cancels (anchor)", "--", "tab:blue"),
        ("lists", "(7b) confirmed through the lists", "-", "tab:green"),
        ("status_only", "(7b) status reads only (anchor)", "--", "tab:green"),
    ):
        run = runs[key]
        finals = [max(at, 1) / 1000 for at in run["finals_ms"]]
        shares = [100 * n / run["orders"] for n in range(len(finals) + 1)]
        ax.step(
            [finals[0], *finals],
            shares,
            where="post",
            linestyle=style,
            color=color,
            label=f"{label}: {run['orders']} orders, last at {run['to_last_final_s']:.1f} s",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel("% of the orders final")
    ax.set_title("(7) orders with a final record after the request, real limits (log time)")
    ax.set_xlabel("seconds since the request")


# ---- (8) the dead man's switch -----------------------------------------------------------

DEADMAN_PARTS = (
    ("claim_ms", "of it: deadline → a dispatcher claims the expired switch (Redis `fired_at`)"),
    ("trip_ms", "of it: claimed → its urgent cancel-all in line (Redis `tripped_at`)"),
    ("send_ms", "of it: in line → the cancel-all at the sandbox"),
)


def _pcts(values: list[float]) -> list[str]:
    """p50 / p99 / max of a sample, in ms."""
    if not values:
        return ["n/a"] * 3
    return [
        _ms(percentile(values, 50)),
        _ms(percentile(values, 99)),
        _ms(max(values)),
    ]


DEADMAN_HEADERS = ["measure", "n", "p50", "p99", "max"]


def deadman_rows(dm: dict[str, Any]) -> list[list[str]]:
    """(8): the trigger delay, its parts, and the direct cancel-all it is compared with."""
    firings = dm["firings"]
    delays = [f["delay_ms"] for f in firings]
    n = str(len(firings))
    rows = [
        ["trigger delay: deadline (last beat + timeout) → its cancel-all at the sandbox", n,
         *_pcts(delays)],
        ["direct cancel-all (anchor): `request_cancel_all` → at the sandbox",
         str(len(dm["direct_ms"])), *_pcts(dm["direct_ms"])],
    ]  # fmt: skip
    rows += [[label, n, *_pcts([f[key] for f in firings])] for key, label in DEADMAN_PARTS]
    rows.append(
        ["the last beat's round trip (the deadline's uncertainty)", n,
         *_pcts([f["beat_rtt_ms"] for f in firings])]
    )  # fmt: skip
    return rows


def _deadman_outcome(dm: dict[str, Any]) -> str:
    limited = sum(dm["rate_limited"].values())
    states = ", ".join(f"{n} {state}" for state, n in sorted(dm["final_states"].items()))
    return (
        f"{dm['match_truth']}/{dm['orders']} final records = exchange ({states}); "
        f"{dm['batches_match']}/{dm['batches']} cancel-alls named exactly the orders open on "
        f"their symbol; {dm['calls']['cancel_all']} cancel-all calls, {limited} 429s; fired "
        f"before the deadline: {dm['early']} of {len(dm['firings'])}; workers running at the "
        f"end: {dm['workers_alive']}/{dm['workers']}"
    )


def deadman_detail_rows(dm: dict[str, Any]) -> list[list[str]]:
    """Benchmark 8 as (section, measure, value) rows, for the terminal."""
    rows = [["(8) deadman", r[0], f"n={r[1]}: p50 {r[2]}, p99 {r[3]}, max {r[4]}"]
            for r in deadman_rows(dm)]  # fmt: skip
    rows += [
        ["(8) deadman", "switch minus direct, p50", _ms(dm["added_p50_ms"])],
        ["(8) deadman", "switch p99 ÷ direct p99", _ratio(dm["p99_over_direct_p99"])],
        ["(8) deadman", "outcome", _deadman_outcome(dm)],
    ]
    return rows


def _deadman_goal(dm: dict[str, Any]) -> Goal:
    delay, direct = dm["delay"], dm["direct"]
    limited = sum(dm["rate_limited"].values())
    goal_ms = dm["goal_p99_ms"]
    return Goal(
        "(8) dead man's switch, trigger delay p99",
        f"{_ms(delay['p99_ms'])} deadline → cancel-all at the sandbox (p50 "
        f"{_ms(delay['p50_ms'])}, max {_ms(delay['max_ms'])}, n={len(dm['firings'])}); "
        f"{dm['early']} early; {limited} 429s; {dm['match_truth']}/{dm['orders']} records "
        "= exchange",
        f"direct cancel-all, request → sandbox: p99 {_ms(direct['p99_ms'])} (p50 "
        f"{_ms(direct['p50_ms'])})",
        dm["p99_over_direct_p99"],
        f"p99 ≤ {goal_ms / 1000:g} s, none early",
        delay["p99_ms"] <= goal_ms
        and dm["early"] == 0
        and limited == 0
        and dm["match_truth"] == dm["orders"],
    )


def _deadman_section(dm: dict[str, Any]) -> list[str]:
    """(8): how late after its deadline the exchange hears a switch's cancel-all."""
    limits = dm["limits"]
    return [
        "## (8) The dead man's switch: how late the exchange hears it",
        "",
        f"A switch guarding BTCUSDT with {dm['orders_per_request']} orders open on it, armed "
        f"(`arm_deadman`) with a timeout of {dm['timeout_s']:g} s (the least worker.deadman "
        f"accepts), beaten {dm['beats']} times every {dm['beat_every_s']:g} s (timeout ÷ 4) "
        f"by `heartbeat`, then left silent. {dm['rounds']} firings, each a switch of its own, "
        f"after {dm['warmups']} unmeasured warm-up. Trigger delay = the arrival of the "
        "switch's cancel-all at the sandbox - (the last beat + the timeout). The anchor, "
        "measured alternately with the firings: an urgent cancel-all requested directly "
        f"(`request_cancel_all`) for {dm['orders_per_request']} orders on ETHUSDT, request → "
        "arrival at the sandbox, i.e. what a strategy asking for the cancel-all itself at the "
        f"deadline would wait. Budgets: cancel-all {limits['cancel_all']} on the workers "
        "(`COINSWITCH_CANCEL_ALL_RATE_LIMIT`) and the sandbox (`cancel_all_limit`), because "
        f"the real 10/60s does not hold {2 * (dm['rounds'] + dm['warmups'])} cancel-alls in "
        "a couple of minutes (each request comes seconds after the last, so no budget ever "
        f"held one back); status reads and order lists {limits['list']}; confirm delay "
        f"{dm['confirm_delay_ms']} ms. The fleet: two Celery workers as `cancel-worker "
        "worker` starts them (cancels -c 4, polls -c 8), each with a dispatcher that watches "
        "the switches.",
        "",
        md_table(DEADMAN_HEADERS, deadman_rows(dm)),
        "",
        f"The switch minus the direct request, p50: {_ms(dm['added_p50_ms'])}; switch p99 ÷ "
        f"direct p99: {_ratio(dm['p99_over_direct_p99'])}. Outcome: {_deadman_outcome(dm)}.",
        "",
        "The deadline is the wall time just before the last `heartbeat` call plus the "
        "timeout; Redis sets the new expiry during that call, so the delay is overstated by "
        "at most its round trip (last row). The parts use Redis's own stamps (whole ms, the "
        "same clock), so they add up to the delay only to within a millisecond or two.",
        "",
    ]


def _plot_deadman(ax: Any, dm: dict[str, Any]) -> None:
    """Each firing's trigger delay beside each direct cancel-all, in order."""
    delays = [f["delay_ms"] for f in dm["firings"]]
    rounds = range(1, len(delays) + 1)
    ax.plot(rounds, delays, "o-", label=f"switch: deadline → cancel-all at the sandbox (p99 "
            f"{_ms(dm['delay']['p99_ms'])})")  # fmt: skip
    direct_p99 = _ms(dm["direct"]["p99_ms"])
    ax.plot(range(1, len(dm["direct_ms"]) + 1), dm["direct_ms"], "s--",
            label=f"direct cancel-all: request → sandbox (p99 {direct_p99})")  # fmt: skip
    ax.set_ylabel("ms")
    ax.set_xlabel("round (one direct cancel-all, then one firing)")
    ax.set_xticks(list(rounds))
    ax.set_title(
        f"(8) dead man's switch, timeout {dm['timeout_s']:g} s: how late the exchange hears "
        f"it (goal p99 ≤ {dm['goal_p99_ms'] / 1000:g} s)"
    )


# ---- (9) losing the Redis primary ---------------------------------------------------------


def _s(ms: float | None) -> str:
    return "n/a" if ms is None or math.isnan(ms) else f"{ms / 1000:.2f} s"


FAILOVER_HEADERS = [
    "failover",
    "(a) Sentinel names the replica",
    "(b) first request (kind)",
    "(b) - (a): the fleet's own",
    "(b) ÷ (a)",
    "a dispatcher notes the new primary",
    "(c) first DELETE",
    "first burst's window frees",
    "last DELETE",
    "last final record",
    "records = exchange",
    "orders with 1 DELETE",
    "429s",
    "Celery workers died / restarted / running at the end",
]


def failover_rows(fo: dict[str, Any]) -> list[list[str]]:
    """(9): each failover, times from the kill; then the medians."""
    rows = []
    for i, r in enumerate(fo["runs"], 1):
        a, b = r["promotion_ms"], r["first_request_ms"]
        rows.append(
            [
                str(i),
                _s(a),
                f"{_s(b)} ({r['first_request_endpoint']})",
                _s(b - a),
                _ratio(b / a),
                _s(r["fleet"]["new_primary_ms"]),
                _s(r["first_delete_ms"]),
                _s(r["window_frees_ms"]),
                _s(r["last_delete_ms"]),
                _s(r["last_final_ms"]),
                f"{r['match_truth']}/{r['orders']}",
                f"{int(r['deletes_per_order'].get('1', 0))}/{r['orders']}",
                str(sum(r["rate_limited"].values())),
                f"{len(r['fleet']['deaths'])} / {len(r['fleet']['restarts_ms'])} / "
                f"{r['workers_running']} of {r['workers']}",
            ]
        )
    rows.append(
        [
            "median",
            _s(fo["promotion_ms"]["median"]),
            _s(fo["first_request_ms"]["median"]),
            _s(fo["resumption_ms"]["median"]),
            _ratio(fo["ratio"]["median"]),
            _s(fo["new_primary_ms"]["median"]),
            _s(fo["first_delete_ms"]["median"]),
            "",
            _s(fo["last_delete_ms"]["median"]),
            _s(fo["last_final_ms"]["median"]),
            f"{fo['match_truth']}/{fo['orders']} (all)",
            f"{fo['one_delete']}/{fo['orders']} (all)",
            f"{fo['rate_limited']} (all)",
            f"{fo['worker_deaths']} / {fo['restarts']} / {fo['workers_running']} of "
            f"{fo['workers_started']} (all)",
        ]
    )
    return rows


def failover_detail_rows(fo: dict[str, Any]) -> list[list[str]]:
    """Benchmark 9 as (section, measure, value) rows, for the terminal."""
    names = FAILOVER_HEADERS[1:]
    return [
        ["(9) failover", f"#{row[0]}",
         "; ".join(f"{h} {v}" for h, v in zip(names, row[1:], strict=True))]
        for row in failover_rows(fo)
    ]  # fmt: skip


def _failover_ok(fo: dict[str, Any]) -> bool:
    orders = int(fo["orders"])
    return (
        int(fo["match_truth"]) == orders
        and int(fo["one_delete"]) == orders
        and int(fo["one_accepted"]) == orders
        and int(fo["rate_limited"]) == 0
    )


def _failover_goal(fo: dict[str, Any]) -> Goal:
    a, b = fo["promotion_ms"]["median"], fo["first_request_ms"]["median"]
    n = fo["failovers"]
    return Goal(
        f"(9) losing the Redis primary ({n} failover{'s' if n != 1 else ''}, median)",
        f"kill → first request {_s(b)}, the fleet's own {_s(fo['resumption_ms']['median'])} "
        f"after the promotion; {fo['match_truth']}/{fo['orders']} records = exchange, "
        f"{fo['one_delete']}/{fo['orders']} with one DELETE, {fo['rate_limited']} 429s; "
        f"Celery workers died {fo['worker_deaths']} of {fo['workers_started']} (restarted "
        "by `cancel-worker worker`)",
        f"Sentinel's promotion (kill → replica named) {_s(a)}",
        fo["ratio"]["median"],
        "every record = exchange, one DELETE each, 0 429s (no time bound set)",
        _failover_ok(fo),
    )


def _failover_notes(fo: dict[str, Any]) -> list[str]:
    """What the logs say about where the time went, in words that follow this run."""
    runs = fo["runs"]
    notes = []
    events = {
        name: [r["sentinel"][name] for r in runs if r["sentinel"].get(name) is not None]
        for name in ("+sdown", "+odown", "+switch-master")
    }
    if all(events.values()):
        switched = percentile(events["+switch-master"], 50)
        early = fo["promotion_ms"]["median"] < switched
        notes.append(
            "- Sentinel (the first of the three to log each, median over the failovers): "
            + ", ".join(f"`{name}` {_s(percentile(v, 50))}" for name, v in events.items())
            + f" after the kill, with `down-after-milliseconds` {fo['down_after_ms']}"
            + (
                "; (a) comes before `+switch-master`: while its failover is under way, the "
                "leading Sentinel already names the replica it promoted."
                if early
                else "."
            )
        )
    noticed = fo["new_primary_ms"]["median"]
    if not math.isnan(noticed):
        notes.append(
            f"- The fleet: a dispatcher logged `dispatcher.new_primary` {_s(noticed)} after "
            f"the kill, {_s(noticed - fo['promotion_ms']['median'])} after the promotion "
            "(medians); a dispatcher whose Redis call failed tries again after 1 s "
            "(worker/dispatcher.py `ERROR_PAUSE_S`)."
        )
    if fo["replica_holds"]:
        notes.append(
            f"- {fo['replica_holds']} turns (over all failovers) logged "
            "`budget.replica_unconfirmed`: after the promotion no replica is left (the old "
            "primary is dead), yet a turn's send time waited for `WAIT 1` "
            "(`CANCEL_WORKER_REPLICA_WAIT_MS`, 500 ms) and, unconfirmed, held its budget for "
            "`REPLICA_HOLD_MS` (1 s) with the slot spent and nothing sent; the replica count "
            "the check relies on is cached (worker/connection.py `REPLICAS_CACHE_S`), so it "
            "still counted the old primary's replica."
        )
    deaths = [d for r in runs for d in r["fleet"]["deaths"]]
    if deaths:
        kinds = sorted({d.split(": ", 1)[1] for d in deaths})
        restarts = [at for r in runs for at in r["fleet"]["restarts_ms"]]
        exited = Counter(name for r in runs for name in r["fleet"].get("exited", []))
        which = ", ".join(f"{n} {name}" for name, n in sorted(exited.items()))
        notes.append(
            f"- {len(deaths)} of the {fo['workers_started']} Celery workers exited during the "
            "failovers"
            + (f" ({which}, by their supervisors' logs)" if which else "")
            + f" with {'; '.join(f'`{k}`' for k in kinds)}, raised in kombu's Redis "
            "transport while closing the lost broker connection. Their `cancel-worker "
            f"worker` supervisors restarted {len(restarts)}"
            + (f", the first {_s(min(restarts))} after the kill" if restarts else "")
            + ". A message a dead worker held comes back only after the visibility timeout "
            "(`CANCEL_WORKER_VISIBILITY_TIMEOUT_S`, 30 s): an order whose DELETE was under way "
            "on it at the kill is confirmed only then, hence a last final record about 30 s "
            "after the kill in the failovers where that happened."
        )
    return notes


def _failover_section(fo: dict[str, Any]) -> list[str]:
    """(9): Sentinel's promotion, the fleet's resumption, and what the kill cost."""
    limits = fo["limits"]
    return [
        "## (9) Losing the Redis primary (Sentinel)",
        "",
        f"Each failover ({fo['failovers']} here): a fresh "
        "`worker.stack.SentinelLayout` (a primary, a replica and three Sentinels on "
        f"loopback, AOF, quorum 2, `down-after-milliseconds` {fo['down_after_ms']}, "
        f"`failover-timeout` {fo['failover_timeout_ms']}), a fresh sandbox and a fleet "
        f"of {fo['hosts']} hosts, i.e. {fo['hosts']} `cancel-worker worker` processes (each "
        "the supervisor of a cancels -c 4 and a polls -c 8 Celery worker, restarting one "
        "that dies, as in production), "
        f"with REDIS_URL naming the Sentinels; budgets {limits['cancel']} DELETE and "
        f"{limits['status']} status and lists, on the workers and the sandbox, so the DELETE "
        f"window does not dominate. {fo['orders_each']} cancels requested at once "
        "(`request_cancels`, acknowledged once a replica has them); as soon as the first "
        f"{fo['first_burst']} DELETEs (the first burst) reached the sandbox, the primary was "
        "SIGKILLed. Times from the kill, on one wall clock: (a) Sentinel's own promotion, "
        "the first `SENTINEL get-master-addr-by-name` (each Sentinel asked every "
        f"{fo['sentinel_poll_ms']:g} ms) that names the replica: the anchor; (b) the first "
        "request of any kind the sandbox receives; (c) the first DELETE, which also waits "
        "for the first burst's window (its first DELETE + 2 s, shown beside it). (b) - (a) "
        "is the fleet's own resumption time. Records = exchange and DELETEs per order are "
        "checked once every order is final (the sandbox's per-order counters).",
        "",
        md_table(FAILOVER_HEADERS, failover_rows(fo)),
        "",
        *_failover_notes(fo),
        "",
    ]


def _plot_failover(ax: Any, fo: dict[str, Any]) -> None:
    """Each failover's requests at the sandbox on a time line from the kill."""
    for i, r in enumerate(fo["runs"], 1):
        arrivals = r["arrivals_ms"]
        deletes = [at / 1000 for at in arrivals.get("cancel", [])]
        others = [at / 1000 for name, ats in arrivals.items() if name != "cancel" for at in ats]
        first = i == 1
        ax.plot(deletes, [i] * len(deletes), "|", color="tab:blue", markersize=10,
                label="DELETE at the sandbox" if first else None)  # fmt: skip
        ax.plot(others, [i - 0.2] * len(others), ".", color="tab:gray",
                label="status / list request" if first else None)  # fmt: skip
        ax.plot([r["promotion_ms"] / 1000], [i], "v", color="tab:red", markersize=9,
                label="(a) Sentinel names the replica" if first else None)  # fmt: skip
        ax.plot([r["first_request_ms"] / 1000], [i + 0.2], "^", color="tab:green", markersize=9,
                label="(b) first request after the kill" if first else None)  # fmt: skip
        noticed = r["fleet"]["new_primary_ms"]
        if noticed is not None:
            ax.plot([noticed / 1000], [i + 0.2], "x", color="tab:purple", markersize=9,
                    label="a dispatcher notes the new primary" if first else None)  # fmt: skip
    ax.axvline(0, color="black", linestyle="--", label="the primary SIGKILLed")
    ax.set_xlim(-1, max(10.0, max(r["last_delete_ms"] for r in fo["runs"]) / 1000 + 1))
    ax.set_yticks(range(1, len(fo["runs"]) + 1))
    ax.set_ylim(0.3, len(fo["runs"]) + 0.7)
    ax.set_ylabel("failover")
    ax.set_xlabel("seconds since the kill (later status reads off the right edge)")
    ax.set_title(f"(9) requests at the sandbox around the loss of the Redis primary, "
                 f"{fo['orders_each']} cancels at {fo['limits']['cancel']}")  # fmt: skip


#: How everything was measured (the end of BENCHMARKS.md).
METHOD = [
    "## Method",
    "",
    "- Every benchmark runs in its own process with its own `redis-server` (free loopback "
    "port, no persistence) and an in-process sandbox, so the service reads the scaled "
    "limits from the environment at import, as in production. Workers are real Celery "
    "processes started with the same environment; each runs a dispatcher thread that "
    "hands out the budgets' free slots to the heads of the waiting lines in Redis and "
    "publishes the task for each turn (no beat).",
    "- Strict-window maximum: the most DELETE arrivals at the sandbox in any window "
    "[t, t + period), 429s included (the exchange counts arrivals). cancel-worker counts "
    "its windows as period + margin, where the margin is learned from request spans "
    "(floor `CANCEL_WORKER_RATE_MARGIN_MS`, 50 ms; ceiling `_MAX_MS`, 2 s), and keeps "
    "each window's last slot for urgent work: a long normal backlog drains at most at "
    "limit / (period + margin), 2000 / 2050 = 0.976 of the nominal rate on loopback "
    "(where the learned margin stays at its 50 ms floor).",
    "- Latency: `request_cancel` → the sandbox handler receiving the DELETE, timed with "
    "`perf_counter` in the same process, budget free (cancels 1000/1s), one cancel at a "
    "time after 5 unmeasured warm-ups, with `cancel-worker worker` (cancels -c 4, polls "
    "-c 8) at INFO logging. The path: the request joins the line (one Lua call, which "
    "leaves a wake token), a dispatcher takes the token, releases the turn and publishes "
    "the task, a cancels worker runs it and commits its send time just before the "
    "DELETE. The direct call is a signed `requests` DELETE from the bench process to the "
    "same sandbox.",
    "- Time to final: `request_cancel` → the record's `final_at`. The sandbox confirms a "
    "cancel 200 ms after accepting it; the worker's first poll comes "
    "`CANCEL_WORKER_POLL_INITIAL_DELAY_S` (default 0.5 s) after the DELETE, which sets "
    "the floor. The 30-order burst shares the 20/2s status budget. Each run starts once "
    "the previous one's sends have left every budget's window.",
    "- Producer: one process, no worker running, fresh Redis. A request is one Redis "
    "round trip: one Lua call that writes each order's record with its QUEUED event and "
    "state count, its sweeper watch (`cw:due`) and its entry in the account's line "
    "(`cw:room:<account>:cancel:ready`); no broker message is sent, so the `cancels` "
    "queue stays empty (checked). Memory per waiting order: INFO `used_memory` before "
    "and after requesting N orders in batches of 500, ÷ N; of it, the line and the watch "
    "set are their keys' `MEMORY USAGE` ÷ N, and the rest is the record. A final record "
    "grows with its order snapshot and history: `MEMORY USAGE` of the 30 burst records.",
    "- Footprint: VmRSS from /proc of the two Celery workers `cancel-worker worker` "
    "starts, idle after start-up and again after benchmarks 2 and 3.",
    "- Cancel-all and the lists (7): every run at the exchange's real limits, in a process "
    "of its own (`python -m benchmarks.mass_cancel RUN`) with its own redis-server, "
    "sandbox, API key and account name, because the service reads its settings once, at "
    "import. Its workers serve that account only (`COINSWITCH_API_KEY` empty). Calls and "
    "429s per endpoint come from the sandbox's `stats()['endpoints'][name]['by_key']`, "
    "counted from the request on; each order's truth from `/_sandbox/orders/<id>`. A "
    "figure computed rather than measured (the per-order time for all of (7a)'s orders) "
    "says so where it appears.",
    "- Scheduler (6): arrival stamps and 429s per API key come from the sandbox's "
    "`stats()['endpoints']['cancel']['by_key']`; the accepted DELETE time of an order from "
    "its history. The bench process and the sandbox share one wall clock.",
    "- Dead man's switch (8): one process (`benchmarks/deadman.py`) with its own "
    "redis-server, the sandbox in that process and two Celery workers. The sandbox's "
    "per-request arrival hook is wrapped to stamp `time.time()` (sub-millisecond), the "
    "clock the beats are timed on and Redis's `TIME` reads; the switch's `fired_at` and "
    "`tripped_at` come from its hash (`cw:deadman:switch:<name>`). Scaled limits on both "
    "sides, not one account per firing: the cancel-all budget at 10/2s on the workers "
    "(`COINSWITCH_CANCEL_ALL_RATE_LIMIT`) and the sandbox (`cancel_all_limit`), with rounds "
    "seconds apart, so no firing or direct request ever waits for the budget and every "
    "firing uses the same key, account and fleet. Timeout 2 s because worker.deadman "
    "refuses less (`MIN_TIMEOUT_S`). A round's next orders are placed only once its "
    "cancel-alls are answered (batch `ACCEPTED`), so no cancel-all covers another's orders; "
    "at the end every order's final record is compared with the sandbox and each batch's "
    "`orders_ids` with the orders that were open.",
    "- Failover (9): each failover in a process of its own (`python -m benchmarks.failover "
    "INDEX`: the service reads REDIS_URL once, and every layout has ports of its own) with "
    "five redis-servers (`SentinelLayout.commands`), started and waited for as "
    "tests/test_failover.py does (the replica's link up, each Sentinel seeing 2 others and "
    "a replica), and two `cancel-worker worker` processes, ready once 4 Celery workers "
    "answer a ping and the account is registered. The fleet runs under the product's own "
    "supervisor, as in production (tests/test_failover.py starts bare Celery workers); any "
    "Celery worker that exits is counted and shown under (9). "
    "The kill is SIGKILL on the primary's process, stamped just before the "
    "signal; Sentinels are polled from a thread started just before it. Arrival stamps as "
    "in (8). The Sentinel events (`+sdown`, `+odown`, `+switch-master`) are read from the "
    "Sentinels' logs (local time, whole ms); `dispatcher.new_primary`, "
    "`budget.replica_unconfirmed`, `Unrecoverable error` and `stack.restarted` from the "
    "hosts' JSON logs. "
    "Medians over the failovers; a ratio (b) ÷ (a) is taken per failover, then its median.",
    "",
]
