"""Result files: results.jsonl, results.csv, table.md, plot.png; the README's Performance section."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Optional

SCHEMA = ("system", "mode", "preset", "random_weights", "seed", "dtype", "batch", "prompt_len",
          "gen_length", "block_length", "schedule", "tokens_per_step", "threshold", "steps",
          "nfe", "nfe_expected", "nfe_note", "tokens_per_s", "latency_p50_s", "latency_p90_s",
          "repeats", "time_per_forward_ms", "tokens_fed_per_forward", "step_floor_ms",
          "floor_fraction", "copy_bandwidth_gbs", "peak_mem_gb", "compile_s",
          "speedup_vs_reference_same_schedule", "speedup_vs_reference_1tok", "speedup_vs_ar",
          "device", "device_name", "torch", "triton", "cuda", "python", "git_commit", "date")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    cols = ("system", "mode", "batch", "schedule", "nfe", "tokens_per_s", "latency_p50_s",
            "time_per_forward_ms", "tokens_fed_per_forward", "floor_fraction",
            "speedup_vs_reference_same_schedule", "speedup_vs_reference_1tok", "speedup_vs_ar")
    head = ["system", "mode", "B", "schedule", "nfe", "tok/s", "p50 s", "ms/fwd", "fed/fwd",
            "floor frac", "x ref (same)", "x ref (1 tok)", "x AR"]
    first = rows[0] if rows else {}
    lines = [f"Device: {first.get('device_name')}; torch {first.get('torch')}, triton "
             f"{first.get('triton')}, CUDA {first.get('cuda')}; commit {first.get('git_commit')}; "
             f"{first.get('date')}; preset {first.get('preset')} with RANDOM weights "
             f"(seed {first.get('seed')}), {first.get('dtype')}; prompt {first.get('prompt_len')}, "
             f"gen {first.get('gen_length')}, block {first.get('block_length')}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Optional[Path]:
    """Tokens/s per system and mode at batch 1 (bars), if matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if "error" not in r]
    if not rows:
        return None
    sel = [r for r in rows if r["batch"] == min(x["batch"] for x in rows)]
    labels = [f"{r['system']}\n{_fmt(r['mode'])}\n{r['schedule']}" for r in sel]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(sel)), 5))
    ax.bar(range(len(sel)), [r["tokens_per_s"] for r in sel], color="tab:blue")
    ax.set_xticks(range(len(sel)), labels, rotation=75, fontsize=6)
    ax.set_ylabel("tokens/s")
    first = sel[0]
    ax.set_title(f"{first['preset']} (random weights), batch {first['batch']}, "
                 f"{first['device_name']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(rows: list[dict], out: Path, stem: str = "results") -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        missing = [k for k in SCHEMA if k not in r]
        if missing:
            raise ValueError(f"result row for {r.get('system')} lacks fields {missing}")
    files = {"jsonl": out / f"{stem}.jsonl", "csv": out / f"{stem}.csv",
             "md": out / "table.md" if stem == "results" else out / f"{stem}.md"}
    with open(files["jsonl"], "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    with open(files["csv"], "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(SCHEMA) + ["config"])
        w.writeheader()
        for r in rows:
            w.writerow({**{k: json.dumps(r[k]) if isinstance(r[k], dict) else r[k]
                           for k in SCHEMA}, "config": json.dumps(r, sort_keys=True)})
    files["md"].write_text(markdown_table(rows), encoding="utf-8")
    png = plot(rows, out / f"{stem}.png")
    if png:
        files["png"] = png
    return files


BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def update_readme(readme: Path, results_dir: Path) -> str:
    """Rewrite the README's Performance section from the newest committed GPU result set: the
    end-to-end rows (those with a "system") measured on CUDA in the last *.jsonl under
    results_dir, at any depth (a device-suite folder holds results.jsonl), ordered by path
    (result sets are named by date). Kernel and step rows of the same file are left out."""
    newest = None
    for path in sorted(results_dir.rglob("*.jsonl"),
                       key=lambda p: p.relative_to(results_dir).as_posix()):
        rows = [r for r in _jsonl(path) if r.get("device") == "cuda" and "system" in r]
        if rows:
            newest = path, rows
    if newest is not None:
        from .runner import add_speedups
        path, rows = newest
        rows = add_speedups(rows)  # rows are written as measured, before the ratios
        try:
            shown = path.resolve().relative_to(readme.resolve().parent).as_posix()
        except ValueError:
            shown = path.as_posix()
        body = (f"From `{shown}` (generated by `python -m fastdiff.bench.report`). "
                f"All weights are random.\n\n" + markdown_table(rows))
    else:
        body = ("No GPU results have been committed yet (no session so far had a GPU); CPU "
                "smoke results under benches/results/ are not performance claims.\n")
    text = readme.read_text(encoding="utf-8")
    section = f"{BEGIN}\n{body}{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda m: section, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    readme.write_text(text, encoding="utf-8")
    return body


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    print(update_readme(root / "README.md", root / "benches" / "results"))
