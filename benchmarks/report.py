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

BUDGET_GOAL = 0.95  # of the allowed rate, with 0 429s
LATENCY_GOAL_MS = 10.0  # p50 enqueue → DELETE arrival
FINAL_SLACK_MS = 1000.0  # p50 to final ≤ confirm delay + this, one order alone
BATCH_GOAL_PER_S = 2000.0
RECORD_GOAL_BYTES = 2048  # 2 KiB per record


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
        ratio = service["sent_ratio"]
        out.append(
            Goal(
                "(1) budget use, 4 workers",
                f"{ratio * allowed:.2f} DELETE/s, {service['rate_limited']} 429s, "
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
        per_record = producer["record_bytes"]
        final_bytes = results.get("pipeline", {}).get("to_final", {}).get("final_record_bytes")
        measured = f"{per_record:.0f} B queued"
        if final_bytes is not None:
            per_record = max(per_record, final_bytes)
            measured += f", {final_bytes:.0f} B final"
        out.append(
            Goal(
                "(4) Redis memory per record",
                measured,
                f"{RECORD_GOAL_BYTES} B",
                per_record / RECORD_GOAL_BYTES,
                "≤ 1",
                per_record <= RECORD_GOAL_BYTES,
            )
        )
    return out


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
                _ratio(v["sent_ratio"]),
                _ratio(v["accepted_ratio"]),
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
    "sent ÷ allowed",
    "accepted ÷ allowed",
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
            ["(4) producer", f"Redis per queued cancel (broker message, n={p['memory_items']})",
             f"{p['queued_message_bytes']:.0f} B"],
            ["(4) producer", "Redis per QUEUED record (key + event + counters)",
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
    """Requests per window against the limit: the cancel backlog and the status burst."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [key for key in ("budget", "pipeline") if key in results]
    fig, axes = plt.subplots(len(panels) or 1, 1, figsize=(9, 3.6 * max(1, len(panels))))
    axes_list = list(axes) if len(panels) > 1 else [axes]
    for ax, key in zip(axes_list, panels, strict=False):
        if key == "budget":
            budget = results["budget"]
            period = budget["period_ms"]
            for v in budget["variants"]:
                series = window_series(v["arrivals_ms"], period)
                ours = v["key"] == "service"
                ax.step(
                    [t / 1000 for t, _ in series], [n for _, n in series], where="post",
                    label=f"{v['label']}: max {v['strict_window_max']}, {v['rate_limited']} 429s",
                    linewidth=2.0 if ours else 1.2, zorder=3 if ours else 2,
                )  # fmt: skip
            ax.axhline(budget["limit"], color="black", linestyle="--", label="exchange limit")
            ax.set_title(
                f"(1) DELETEs in the last {period / 1000:g} s, backlog of {budget['backlog']}, "
                f"{budget['workers']} worker processes"
            )
        else:
            fin = results["pipeline"]["to_final"]
            series = window_series(fin["status_arrivals_ms"], fin["status_period_ms"])
            ax.step(
                [t / 1000 for t, _ in series], [n for _, n in series], where="post",
                label=f"cancel-worker status polls: max {fin['status_strict_window_max']}",
            )  # fmt: skip
            ax.axhline(fin["status_limit"], color="black", linestyle="--", label="exchange limit")
            ax.set_title(
                f"(3) status GETs in the last {fin['status_period_ms'] / 1000:g} s, "
                f"{fin['burst_count']} orders awaiting confirmation at once"
            )
        ax.set_xlabel(
            "seconds since the first DELETE" if key == "budget" else "seconds since enqueue"
        )
        ax.set_ylabel("requests per window")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        "## Goals (issue 7)",
        "",
        md_table(GOAL_HEADERS, goal_rows(goals(results))),
        "",
    ]
    if errors:
        parts += ["## Benchmarks that failed", ""]
        parts += [f"- `{name}`: {message}" for name, message in errors.items()]
        parts.append("")
    if "budget" in results:
        b = results["budget"]
        parts += [
            "## (1) Budget use with a backlog",
            "",
            f"A backlog of {b['backlog']} cancels enqueued at once; {b['workers']} worker "
            f"processes (threads pool, -c {b['concurrency']}); sandbox limit {b['limit']} "
            f"DELETEs per {b['period_ms'] / 1000:g} s, strictly sliding; a fresh sandbox "
            "and an emptied Redis per variant. The plain Celery task sends once and does "
            "not retry a 429, so a refused cancel leaves its order open.",
            "",
            md_table(BUDGET_HEADERS, budget_rows(b)),
            "",
        ]
    parts += [
        "## (2)-(5) Latency, time to final, producer, footprint",
        "",
        md_table(DETAIL_HEADERS, detail_rows(results)),
        "",
        f"![requests per window against the limit]({plot_link})",
        "",
        "## Method",
        "",
        "- Every benchmark runs in its own process with its own `redis-server` (free loopback "
        "port, no persistence) and an in-process sandbox, so the service reads the scaled "
        "limits from the environment at import, as in production. Workers are real Celery "
        "processes started with the same environment.",
        "- Strict-window maximum: the most DELETE arrivals at the sandbox in any window "
        "[t, t + period). Achieved ÷ allowed: after the first burst of `limit`, "
        "(sends - limit) / (last - first arrival), divided by limit / period; a perfect "
        "limiter scores 1. cancel-worker spaces its windows by period + 50 ms "
        "(`CANCEL_WORKER_RATE_MARGIN_MS`), so its ceiling is 2000/2050 = 0.976.",
        "- Latency: `request_cancel` → the sandbox handler receiving the DELETE, timed with "
        "`perf_counter` in the same process, budget free (cancels 1000/1s), one cancel at a "
        "time after 5 unmeasured warm-ups, with `cancel-worker worker` (cancels -c 4, polls "
        "-c 8) at INFO logging. The direct call is a signed `requests` DELETE from the "
        "bench process to the same sandbox.",
        "- Time to final: `request_cancel` → the record's `final_at`. The sandbox confirms a "
        "cancel 200 ms after accepting it; the worker's first poll comes "
        "`CANCEL_WORKER_POLL_INITIAL_DELAY_S` (default 0.5 s) after the DELETE, which sets "
        "the floor. The 30-order burst shares the 20/2s status budget.",
        "- Producer: one process, no worker running, fresh Redis. A request is three Redis "
        "round trips: LLEN of the queue, one Lua call that creates its records, and one "
        "pipeline with its messages and their task-sent events (kombu's `Producer.batch()`, "
        "flushed every 1,000 commands). Memory: INFO `used_memory` "
        "before and after enqueuing N cancels in batches of 500, then after deleting the "
        "broker queue (the difference is the queued messages; what stays is the records, "
        "each with its QUEUED event in `cw:events`). A final record grows with its order "
        "snapshot and history: `MEMORY USAGE` of the 30 burst records.",
        "- Footprint: VmRSS from /proc of the two Celery workers `cancel-worker worker` "
        "starts, idle after start-up and again after benchmarks 2 and 3.",
        "",
    ]
    return "\n".join(parts)
