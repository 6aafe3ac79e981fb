"""The benchmark harness on the CPU (a smoke test: no speed is asserted)."""
import json

import pytest
import torch
import torch.nn.functional as F

from fastdiff import Engine, GenerationConfig, ModelConfig
from fastdiff.bench.baselines import ARBaseline, ReferenceLoop
from fastdiff.bench.report import SCHEMA, update_readme
from fastdiff.cli import main as cli_main
from fastdiff.models import load_checkpoint, save_random_checkpoint


def test_from_config_equals_the_writer(tmp_path):
    cfg = ModelConfig.preset("tiny")
    path = save_random_checkpoint(tmp_path / "c", cfg, seed=5, dtype=torch.bfloat16)
    disk = load_checkpoint(path, dtype=torch.bfloat16).model
    eng = Engine.from_config(cfg, seed=5, device="cpu", dtype=torch.bfloat16)
    assert eng.tokenizer is None and eng.model.dtype == torch.bfloat16
    assert torch.equal(eng.model.wte, disk.wte) and torch.equal(eng.model.lm_head, disk.lm_head)
    for a, b in zip(eng.model.layers, disk.layers):
        for t, u in zip(a.tensors(), b.tensors(), strict=True):
            assert torch.equal(t, u)


@pytest.fixture(scope="module")
def tiny_engine():
    return Engine.from_config(ModelConfig.preset("tiny"), seed=0, device="cpu", dtype="float32")


def test_reference_loop_is_llada_generate(tiny_engine):
    """(b) decodes exactly what the engine decodes (same semantics, different machinery)."""
    prompt = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    ref = ReferenceLoop(tiny_engine.model)
    got, nfe = ref.generate(prompt, gen_length=16, steps=8, block_length=8)
    want = tiny_engine.generate(prompt.tolist(), GenerationConfig(gen_length=16, steps=8,
                                                                  block_length=8))
    assert nfe == 8 and got.tolist() == [c.full_ids for c in want]


def test_ar_baseline_is_greedy_causal_decoding(tiny_engine):
    """(c) with its static cache equals recomputing the causal forward for every token."""
    m = tiny_engine.model
    prompt = torch.tensor([[5, 6, 7, 8, 9]])
    got, nfe = ARBaseline(m).generate(prompt, gen_length=6)
    seq = prompt.clone()
    cfg, ops = m.config, m.ops
    for _ in range(6):  # naive: full causal recompute, no cache
        B, S = seq.shape
        pos = torch.arange(S)[None]
        cos, sin = ops.rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
        h = m.wte[seq]
        for L in m.layers:
            n = ops.rms_norm(h, L.attn_norm, cfg.rms_norm_eps)
            q = ops.apply_rope((n @ L.q_proj.T).view(B, S, cfg.n_heads, -1), cos, sin)
            k = ops.apply_rope((n @ L.k_proj.T).view(B, S, cfg.n_kv_heads, -1), cos, sin)
            v = (n @ L.v_proj.T).view(B, S, cfg.n_kv_heads, -1)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            h = h + a.transpose(1, 2).reshape(B, S, -1) @ L.attn_out.T
            mm = ops.rms_norm(h, L.ff_norm, cfg.rms_norm_eps)
            h = h + ops.silu_mul(mm @ L.ff_proj.T, mm @ L.up_proj.T) @ L.ff_out.T
        nxt = m.logits(ops.rms_norm(h[:, -1], m.ln_f, cfg.rms_norm_eps)).argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    assert nfe == 6 and got.tolist() == seq[:, 5:].tolist()
    # the same with the Triton backend's fused layer (interpreted here; the GPU's AR rows)
    from fastdiff.ops import get_ops
    tri, _ = ARBaseline(m.with_ops(get_ops("triton"))).generate(prompt, gen_length=6)
    assert tri.tolist() == got.tolist()


def test_cli_bench_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "bench"
    assert cli_main(["bench", "--preset", "tiny", "--device", "cpu", "--out", str(out)]) == 0
    for name in ("results.jsonl", "results.csv", "table.md", "results.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    systems = {(r["system"], r["mode"].get("cache")) for r in rows}
    assert {("fastdiff", "none"), ("fastdiff", "prefix"), ("fastdiff", "dual"),
            ("reference_loop", "none"), ("ar_static_cache", None)} <= systems
    for r in rows:
        assert all(k in r for k in SCHEMA), [k for k in SCHEMA if k not in r]
        assert r["random_weights"] is True and r["device"] == "cpu"
        if r["nfe_expected"] is not None:
            assert r["nfe"] == r["nfe_expected"], r
        else:
            assert r["threshold"] == 0.9 and 0 < r["nfe"] <= r["gen_length"]
        assert r["tokens_per_s"] > 0 and r["latency_p90_s"] >= r["latency_p50_s"]
    assert "RANDOM weights" in (out / "table.md").read_text()


def test_readme_performance_section_without_gpu_results(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Performance\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "cpu.jsonl").write_text(json.dumps({"device": "cpu"}) + "\n")
    body = update_readme(readme, tmp_path / "results")
    assert "No GPU results" in body and "performance:begin" in readme.read_text()
    update_readme(readme, tmp_path / "results")  # idempotent: one section
    assert readme.read_text().count("performance:begin") == 1


def test_readme_performance_section_from_newest_gpu_set(tmp_path):
    """The device suite's folder (results.jsonl one level down) is found; only its end-to-end
    CUDA rows reach the table (step and kernel rows of the same file do not); the newest set by
    path wins; the source path is shown relative to the README."""
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    results = tmp_path / "benches" / "results"

    def e2e(system, tok_s):
        return {"device": "cuda", "device_name": "NVIDIA H100", "system": system,
                "mode": {"cache": "dual"}, "batch": 1, "schedule": "4 tok/step",
                "tokens_per_s": tok_s, "git_commit": "abc123"}

    old, new = results / "2026-11-01-h100", results / "2026-12-01-h200"
    for folder, rows in ((old, [e2e("old_system", 1.0)]),
                         (new, [{"device": "cuda", "bench": "step", "kind": "refresh_step"},
                                {"device": "NVIDIA H200", "bench": "attention", "impl": "triton"},
                                e2e("fastdiff", 1234.5)])):
        folder.mkdir(parents=True)
        (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (results / "2026-11-27-cpu-small.jsonl").write_text(
        json.dumps({"device": "cpu", "system": "fastdiff"}) + "\n")
    body = update_readme(readme, results)
    assert "From `benches/results/2026-12-01-h200/results.jsonl`" in body
    table = [line for line in body.splitlines() if line.startswith("| ")][1:]  # rows, no header
    assert len(table) == 1 and table[0].startswith("| fastdiff |") and "1234.5" in table[0]
    assert "old_system" not in body and "refresh_step" not in body


def test_git_commit_prefers_fastdiff_commit(monkeypatch):
    """A device machine's copy of the tree has no .git: FASTDIFF_COMMIT names the commit."""
    from fastdiff.bench import env
    monkeypatch.setenv("FASTDIFF_COMMIT", "0123456789ab")
    assert env.git_commit() == "0123456789ab"
    assert env.environment(torch.device("cpu"))["git_commit"] == "0123456789ab"
    monkeypatch.delenv("FASTDIFF_COMMIT")
    assert env.git_commit() != "0123456789ab"


def test_bench_e2e_writes_each_row_as_measured(tmp_path):
    """benches/bench_e2e.py (the device suite's end-to-end step) on the CPU: step rows say how
    they were timed, every row reaches results.jsonl, both table sections are written."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(root / "benches" / "bench_e2e.py"), "--preset", "tiny",
                    "--contexts", "96", "--quick", "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=300)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["bench"] == "step"]
    assert {r["kind"] for r in steps} == {"refresh_step", "dual_cached_step"}
    assert all(r["timing"] == "eager" and r["step_ms_p50"] > 0 for r in steps)
    e2e = [r for r in rows if r["bench"] == "e2e"]
    assert {r["system"] for r in e2e} >= {"fastdiff", "reference_loop", "ar_static_cache"}
    table = (tmp_path / "table.md").read_text()
    assert "Cached step vs floor" in table and "End to end (tiny)" in table


def test_run_plan_keeps_rows_when_one_fails(monkeypatch):
    """A failing measurement becomes an error row; the rows before and after it are kept and
    every row reaches on_row as soon as it exists."""
    from fastdiff.bench import runner
    real = runner._measure

    def measure(system, *a, **k):
        if system == "reference_loop":
            raise RuntimeError("boom")
        return real(system, *a, **k)
    monkeypatch.setattr(runner, "_measure", measure)
    seen = []
    plan = runner.Plan("tiny", [runner.Scenario(1, 16, 32, 8, 4),
                                runner.Scenario(1, 16, 32, 8, 1, systems=("ar_static_cache",))],
                       caches=("dual",), systems=("fastdiff", "reference_loop"), repeats=1)
    rows = runner.run_plan(plan, device=torch.device("cpu"), dtype=torch.float32,
                           log=lambda s: None, on_row=seen.append)
    assert [r["system"] for r in rows] == ["fastdiff", "reference_loop", "ar_static_cache"]
    assert rows[1]["error"] == "RuntimeError: boom" and "tokens_per_s" not in rows[1]
    assert rows[0]["speedup_vs_ar"] is not None  # ratios computed from the rows that worked
    assert seen == rows
