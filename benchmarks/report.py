"""Turn the benchmarks' figures into the goals table, BENCHMARKS.md and the PNG plot."""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.common import window_series

BUDGET_GOAL = 0.95  # of the allowed rate (average-rate metric), with 0 429s
LATENCY_GOAL_MS = 10.0  # p50 enqueue → DELETE arrival
FINAL_SLACK_MS = 1000.0  # p50 to final ≤ confirm delay + this, one order alone
BATCH_GOAL_PER_S = 2000.0
RECORD_GOAL_BYTES = 2048  # 2 KiB per waiting order, and per final record
# The scheduler's bounds, as tests/test_scheduling.py asserts them:
JITTER_BUDGET_GOAL = 0.85  # of the allowed rate under 0..150 ms jitter, with 0 429s
URGENT_GOAL_INTERVALS = 1.0  # an urgent cancel waits at most one slot interval
BETA_SLACK_INTERVALS = 2  # beta beside two backlogs: at most its time alone + 2 intervals


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
    return [[g.name, g.measured, g.anchor, f"{g.ratio:.2f}", g.target, g.verdict] for g in items]


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
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


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
        )
        if key in results
    ]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, 3.4 * max(1, len(panels))))
    axes_list = list(axes) if len(panels) > 1 else [axes]
    for ax, (key, draw) in zip(axes_list, panels, strict=False):
        draw(ax, results[key])
        ax.set_ylabel("requests per window")
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
    condition_rows = [
        [
            name,
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
        "sandbox exchange with scaled limits; every figure here was measured by that run "
        f"(raw figures in `{Path(plot_link).with_name('results.json')}`)"
        + (" (SMOKE run: small samples, not for comparison)." if smoke else "."),
        f"The run took {total:.0f} s ("
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
        "tests/test_scheduling.py asserts them. Ratio = measured ÷ anchor.",
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
    parts += [
        "## (2)-(5) Latency, time to final, producer, footprint",
        "",
        md_table(DETAIL_HEADERS, detail_rows(results)),
        "",
    ]
    if "scheduling" in results:
        parts += _scheduling_section(results["scheduling"])
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
    "- Scheduler (6): arrival stamps and 429s per API key come from the sandbox's "
    "`stats()['endpoints']['cancel']['by_key']`; the accepted DELETE time of an order from "
    "its history. The bench process and the sandbox share one wall clock.",
    "",
]
