"""bench-serve results: one summary row per rate (from the requests' outcomes and, in process,
the recorded runs), and the files <stem>.json (rows), <stem>.md (table), <stem>.png (latency
vs request rate). Every row carries the device, versions, commit and the load's settings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .env import percentile
from .serve_bench import Outcome

def _pcts(xs: list[float], prefix: str, qs=(50, 90, 99)) -> dict:
    return {f"{prefix}_p{q}_s": (percentile(xs, q / 100) if xs else None) for q in qs}


def summarize(rate: float, outcomes: list[Outcome], runs: Optional[list[dict]],
              max_batch_size: int) -> dict:
    """One result row: throughput, latency percentiles, batch size and queue waits at `rate`."""
    ok = [o for o in outcomes if o.error is None and o.done is not None]
    start = min(o.sent for o in outcomes)
    end = max([o.done for o in ok] or [start])
    span = max(end - start, 1e-9)
    tokens = sum(o.completion_tokens or 0 for o in ok)
    row = {"rate_rps": rate, "requests": len(outcomes), "completed": len(ok),
           "errors": sorted({o.error for o in outcomes if o.error})[:3],
           "duration_s": span, "requests_per_s": len(ok) / span, "output_tok_per_s": tokens / span,
           "completion_tokens": tokens,
           "mean_prompt_tokens": (sum(o.prompt_tokens or 0 for o in ok) / len(ok)) if ok else None}
    row.update(_pcts([o.first - o.sent for o in ok if o.first is not None], "ttft"))
    row.update(_pcts([o.done - o.sent for o in ok], "e2e"))
    if runs is not None:
        row.update(run_stats(outcomes, runs, max_batch_size))
    return row


def run_stats(outcomes: list[Outcome], runs: list[dict], max_batch_size: int) -> dict:
    """From the recorded runs: mean batch size, queue wait (arrival -> own run start), and for
    requests that arrived while another run was going: their wait for the running batch and the
    wait to that run's next block boundary had they been able to join there (the run had room
    and the same output length; else no saving)."""
    waits, busy, boundary = [], [], []
    for o in outcomes:
        if o.run_start is None:
            continue
        waits.append(o.run_start - o.sent)
        going = [r for r in runs if r["start"] < o.sent < r["end"] and o.seed not in r["seeds"]]
        if not going:
            continue
        r = going[0]
        busy.append(o.run_start - o.sent)
        nxt = next((b for b in r["bounds"] if b > o.sent), r["end"])
        joinable = r["batch"] < max_batch_size and r["gen_length"] == o.gen_length
        boundary.append(min(nxt - o.sent, o.run_start - o.sent) if joinable
                        else o.run_start - o.sent)
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {"runs": len(runs), "mean_batch_size": mean([r["batch"] for r in runs]),
            **_pcts(waits, "queue_wait"), "queue_wait_mean_s": mean(waits),
            "midrun_requests": len(busy), "midrun_wait_mean_s": mean(busy),
            "midrun_wait_p90_s": percentile(busy, 0.9) if busy else None,
            "midrun_wait_if_join_at_block_mean_s": mean(boundary),
            "midrun_saving_mean_s": (mean(busy) - mean(boundary)) if busy else None}



COLUMNS = (  # (row key, header, scale)
    ("rate_rps", "rate req/s", 1), ("completed", "done", 1), ("requests_per_s", "req/s", 1),
    ("output_tok_per_s", "out tok/s", 1), ("ttft_p50_s", "TTFT p50 ms", 1e3),
    ("ttft_p90_s", "p90", 1e3), ("ttft_p99_s", "p99", 1e3), ("e2e_p50_s", "e2e p50 ms", 1e3),
    ("e2e_p90_s", "p90", 1e3), ("e2e_p99_s", "p99", 1e3), ("mean_batch_size", "mean batch", 1),
    ("queue_wait_p50_s", "queue wait p50 ms", 1e3), ("queue_wait_p90_s", "p90", 1e3),
    ("midrun_requests", "mid-run arrivals", 1),
    ("midrun_wait_mean_s", "their wait ms (mean)", 1e3),
    ("midrun_wait_if_join_at_block_mean_s", "if joining at block ms", 1e3))


def _fmt(v, scale: float = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) or scale != 1:
        v = v * scale
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def settings_text(s: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items() if v is not None)


def markdown(rows: list[dict]) -> str:
    head = [h for _, h, _ in COLUMNS] + ["mode", "device", "commit", "settings"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [_fmt(r.get(k), scale) for k, _, scale in COLUMNS]
        cells += [r["mode"], r["device_name"], r["git_commit"], settings_text(r["settings"])]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0] if rows else {}
    random = " (RANDOM weights)" if first.get("random_weights") else ""
    note = (f"Model {first.get('model')}{random}; torch {first.get('torch')}, triton "
            f"{first.get('triton')}, CUDA {first.get('cuda')}; {first.get('date')}. Open-loop "
            "Poisson arrivals, streaming on; TTFT = first streamed text; queue wait = arrival to "
            "the start of the request's run; mid-run arrivals = requests arriving while another "
            "run was going (they wait for it: requests join only when a run starts); 'if joining "
            "at block' = their wait had they joined that run at its next block boundary (room "
            "and equal output length permitting).")
    return note + "\n\n" + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Optional[Path]:
    """Latency (TTFT and end-to-end p50 / p90, queue wait p50) against the offered rate."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rates = [r["rate_rps"] for r in rows]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for key, label, style in (("e2e_p50_s", "end-to-end p50", "o-"),
                              ("e2e_p90_s", "end-to-end p90", "o--"),
                              ("ttft_p50_s", "first text p50", "s-"),
                              ("ttft_p90_s", "first text p90", "s--"),
                              ("queue_wait_p50_s", "queue wait p50", "^:")):
        pts = [(x, r[key]) for x, r in zip(rates, rows) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("seconds")
    ax.set_title("latency vs request rate", fontsize=9)
    ax.legend(fontsize=7)
    ax2.plot(rates, [r["output_tok_per_s"] for r in rows], "o-", label="output tokens/s")
    ax2.set_xlabel("offered load (requests/s)")
    ax2.set_ylabel("output tokens/s")
    batch = [(x, r["mean_batch_size"]) for x, r in zip(rates, rows)
             if r.get("mean_batch_size") is not None]
    if batch:
        ax3 = ax2.twinx()
        ax3.plot(*zip(*batch), "^--", color="tab:orange", label="mean batch")
        ax3.set_ylabel("mean batch size")
    ax2.set_title("throughput", fontsize=9)
    first = rows[0]
    random = " (random weights)" if first.get("random_weights") else ""
    fig.suptitle(f"{first['mode']}: {first['model']}{random} on {first['device_name']}, commit "
                 f"{first['git_commit']}\n{settings_text(first['settings'])}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def one_line(r: dict) -> str:
    return (f"[bench-serve] rate {r['rate_rps']} req/s: {r['completed']}/{r['requests']} done, "
            f"{r['requests_per_s']:.2f} req/s, {r['output_tok_per_s']:.1f} out tok/s, TTFT p50 "
            f"{_fmt(r['ttft_p50_s'], 1e3)} ms, e2e p50/p99 {_fmt(r['e2e_p50_s'], 1e3)}/"
            f"{_fmt(r['e2e_p99_s'], 1e3)} ms, mean batch {_fmt(r.get('mean_batch_size'))}, "
            f"queue wait p50 {_fmt(r.get('queue_wait_p50_s'), 1e3)} ms")


def write(rows: list[dict], out: Path, stem: str = "serve_bench") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    files["json"].write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    files["md"].write_text(markdown(rows), encoding="utf-8")
    png = plot(rows, out / f"{stem}.png")
    if png is not None:
        files["png"] = png
    return files
