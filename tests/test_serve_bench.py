"""bench-serve: the load plan, the run-timeline statistics, /metrics parsing, the in-process mode
(in a process where fastapi / httpx / openai / uvicorn cannot be imported) and the HTTP mode
against a real `fastdiff serve` subprocess."""
import json
import os
import subprocess
import sys

import pytest
import torch

from fastdiff.bench.serve_bench import LoadSpec, Outcome, make_plan
from fastdiff.bench.serve_report import run_stats

LOAD = ["--rates", "20", "--prompt-lens", "4,12", "--gen-lengths", "8,16", "--block-length",
        "8", "--max-batch-size", "4", "--max-wait-ms", "30", "--threads", "1", "--seed", "3"]


def test_plan_is_poisson_and_deterministic():
    spec = LoadSpec(rates=(4.0,), requests=2000, prompt_lens=(3, 5), gen_lengths=(8, 16))
    plan = make_plan(spec, 4.0, 0)
    assert plan == make_plan(spec, 4.0, 0)
    arrivals = [p.arrival for p in plan]
    assert all(b > a for a, b in zip(arrivals, arrivals[1:]))
    gaps = [b - a for a, b in zip([0.0] + arrivals, arrivals)]
    mean = sum(gaps) / len(gaps)
    var = sum((g - mean) ** 2 for g in gaps) / len(gaps)
    assert abs(mean - 0.25) < 0.02 and abs(var ** 0.5 - 0.25) < 0.03  # exponential: sd = mean
    assert {p.gen_length for p in plan} == {8, 16} and {p.prompt_len for p in plan} == {3, 5}
    seeds = [p.seed for p in plan] + [p.seed for p in make_plan(spec, 4.0, 1)]
    assert len(set(seeds)) == len(seeds)  # requests map to runs by seed
    with pytest.raises(ValueError, match="rates"):
        LoadSpec(rates=(0.0,))


def test_run_stats_queue_wait_and_block_boundary_saving():
    runs = [{"start": 0.0, "end": 1.0, "batch": 1, "seeds": {1}, "gen_length": 8,
             "bounds": [0.5, 1.0]},
            {"start": 1.0, "end": 2.0, "batch": 2, "seeds": {2, 3}, "gen_length": 8,
             "bounds": [1.5, 2.0]}]
    outs = [Outcome(0, 8, 1, sent=0.0, run_start=0.0), Outcome(1, 8, 2, sent=0.2, run_start=1.0),
            Outcome(2, 16, 3, sent=0.6, run_start=1.0)]
    s = run_stats(outs, runs, max_batch_size=4)
    assert s["runs"] == 2 and s["mean_batch_size"] == 1.5
    assert s["queue_wait_mean_s"] == pytest.approx((0.0 + 0.8 + 0.4) / 3)
    assert s["midrun_requests"] == 2 and s["midrun_wait_mean_s"] == pytest.approx(0.6)
    # request 1 could have joined at the boundary 0.5 (0.3 s); request 2 has another output
    # length, so it waits the same 0.4 s either way
    assert s["midrun_wait_if_join_at_block_mean_s"] == pytest.approx((0.3 + 0.4) / 2)
    assert s["midrun_saving_mean_s"] == pytest.approx(0.25)


def test_metrics_histogram_delta():
    from fastdiff.bench.serve_http import histogram_delta, parse_metrics
    text = ('# HELP fastdiff_batch_size Rows\n# TYPE fastdiff_batch_size histogram\n'
            'fastdiff_batch_size_bucket{le="1.0"} %d\nfastdiff_batch_size_bucket{le="2.0"} %d\n'
            'fastdiff_batch_size_bucket{le="4.0"} %d\nfastdiff_batch_size_bucket{le="+Inf"} %d\n'
            'fastdiff_batch_size_count %d\nfastdiff_batch_size_sum %d\n')
    before = parse_metrics(text % (1, 1, 1, 1, 1, 1))
    after = parse_metrics(text % (3, 5, 5, 5, 5, 7))  # + 2 runs of 1 row, 2 runs of 2 rows
    d = histogram_delta(before, after, "fastdiff_batch_size")
    assert d["count"] == 4 and d["mean"] == pytest.approx(6 / 4)
    assert d["p50"] == pytest.approx(1.0) and d["p90"] == pytest.approx(1.8)
    assert histogram_delta(before, after, "fastdiff_queue_wait_seconds") is None


def _check_rows(out, requests, mode):
    rows = json.loads((out / "serve_bench.json").read_text())
    assert len(rows) == 1
    r = rows[0]
    assert r["mode"] == mode and r["completed"] == requests and r["errors"] == []
    assert r["git_commit"] and r["device_name"] and r["settings"]["block_length"] == 8
    assert 0 < r["ttft_p50_s"] <= r["e2e_p99_s"] and r["output_tok_per_s"] > 0
    assert r["mean_batch_size"] >= 1
    md = (out / "serve_bench.md").read_text()
    assert r["git_commit"] in md.splitlines()[-1]
    assert (out / "serve_bench.png").stat().st_size > 0
    return r


def test_in_process_imports_no_web_stack(tiny_ckpt, tmp_path):
    code = ("import sys\n"
            "for m in ('fastapi', 'httpx', 'openai', 'uvicorn', 'starlette'):\n"
            "    sys.modules[m] = None  # import m raises ImportError\n"
            "from fastdiff.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, "-c", code, "bench-serve", "--in-process", "--model",
                        str(tiny_ckpt), "--requests", "5", *LOAD, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    r = _check_rows(tmp_path, 5, "in-process")
    assert r["runs"] >= 1 and r["queue_wait_p50_s"] >= 0
    assert r["midrun_wait_if_join_at_block_mean_s"] is None or \
        r["midrun_wait_if_join_at_block_mean_s"] <= r["midrun_wait_mean_s"] + 1e-9


def test_http_mode_against_a_started_server(tiny_ckpt, tmp_path):
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from fastdiff.cli import main
    n = torch.get_num_threads()
    try:
        assert main(["bench-serve", "--model", str(tiny_ckpt), "--requests", "3", *LOAD,
                     "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(n)
    _check_rows(tmp_path, 3, "http")
