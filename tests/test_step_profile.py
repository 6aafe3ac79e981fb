"""The per-kernel step profile (issue 12): the report's structure on the tiny preset on a CPU
(aten ops stand in for kernels), and the GPU path of reading profiler events on synthetic events.
No speed is asserted."""
import json
from types import SimpleNamespace as NS

import pytest
import torch
from torch.autograd import DeviceType

from fastdiff import ModelConfig
from fastdiff.bench import profile_tables as pt
from fastdiff.bench import step_profile as sp

LAYER_GEMMS = ("gemm qkv", "gemm attn_out", "gemm gate_up", "gemm ff_out")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("step_profile")
    rc = sp.main(["--preset", "tiny", "--device", "cpu", "--backend", "torch", "--contexts", "96",
                  "--warmup", "1", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return rc, rows, (out / "table.md").read_text()


def test_rows_and_counts(report):
    rc, rows, _ = report
    assert rc == 0
    assert [r["config"]["phase"] for r in rows] == ["dual_cached_step", "refresh_step"]
    for r in rows:
        assert r["kind"] == "step_profile" and r["config"]["activity"] == pt.CPU_LABEL
        assert r["device_name"] and r["torch"] and r["git_commit"] and r["config"]["context"] == 96
        m = r["metrics"]
        for key in ("kernels", "cpu_count_step", "cpu_count_per_layer", "cpu_count_outside"):
            assert isinstance(m[key], int) and m[key] > 0, (key, m[key])
        assert m["cpu_count_error"] is None
        assert m["cpu_count_step"] == m["cpu_count_outside"] + 2 * m["cpu_count_per_layer"]
        assert sum(k["calls"] for k in r["kernels"]) == m["kernels"]
        assert sum(g["kernels"] for g in r["groups"]) == m["kernels"]
        assert m["kernels_per_layer"] == m["kernels"] / 2
        assert m["busy_us"] > 0 and m["step_floor_us"] > 0 and m["copy_bandwidth_gbs"] > 0


def test_groups_have_gemm_attention_and_lm_head_with_floors(report):
    _, rows, _ = report
    cfg = ModelConfig.preset("tiny")
    for r in rows:
        groups = {g["group"]: g for g in r["groups"]}
        assert set(LAYER_GEMMS) | {"attention", "lm_head", "add_rms_norm", "rope_kv",
                                   "silu_mul", "step_prepare", "select_commit"} <= set(groups)
        for name in (*LAYER_GEMMS, "attention", "rope_kv", "silu_mul"):
            assert groups[name]["op_calls"] == cfg.n_layers, name
        assert groups["add_rms_norm"]["op_calls"] == 2 * cfg.n_layers + 1  # + ln_f
        assert groups["lm_head"]["op_calls"] == 1
        for name in (*LAYER_GEMMS, "attention", "lm_head"):
            assert groups[name]["floor_us"] > 0 and groups[name]["flops"] > 0, name
            assert not groups[name]["approx"]
        assert groups["add_rms_norm"]["approx"] and groups["add_rms_norm"]["bytes"] > 0
    cached = {g["group"]: g for g in rows[0]["groups"]}
    d, n_qkv, el = cfg.d_model, 3 * cfg.d_model, 4  # fp32; 32 rows fed per layer
    assert cached["gemm qkv"]["bytes"] == 2 * (32 * d + d * n_qkv + 32 * n_qkv) * el
    assert cached["gemm qkv"]["flops"] == 2 * 2 * 32 * d * n_qkv
    kv = 2 * 96 * cfg.n_kv_heads * cfg.head_dim * el  # attention reads K and V of 96 tokens
    assert cached["attention"]["bytes"] > cfg.n_layers * kv


def test_table_md(report):
    _, _, table = report
    assert "### step profile: tiny" in table and "kernels (profiler)" in table
    for name in (*LAYER_GEMMS, "attention", "lm_head"):
        assert f"| {name} |" in table
    assert table.count("| 96 | ") == 2


def _cpu(name, kernels=(), parent=None, shapes=()):
    e = NS(name=name, device_type=DeviceType.CPU, kernels=[NS(name=n, duration=us)
                                                            for n, us in kernels],
           cpu_parent=parent, cpu_children=[], input_shapes=list(shapes),
           is_user_annotation=False)
    if parent is not None:
        parent.cpu_children.append(e)
    return e


def _dev(name, start, us, annotation=False):
    return NS(name=name, device_type=DeviceType.CUDA, kernels=[], cpu_parent=None,
              cpu_children=[], input_shapes=[], is_user_annotation=annotation,
              time_range=NS(start=start, end=start + us))


def test_gpu_events_are_linked_grouped_and_floored():
    """Kernels linked to a fastdiff::<op> range or an aten GEMM; memcpy, annotations and the
    runtime apart; an unlinked kernel named by its kernel name; split kernels show "aux"."""
    cfg = ModelConfig.preset("tiny")
    d, n_qkv = cfg.d_model, 3 * cfg.d_model
    step = _cpu("ProfilerStep*")
    attn = _cpu("fastdiff::attention", [("_attention_kernel", 40.0),
                                        ("_attention_combine_kernel", 4.0)], step)
    mm = _cpu("aten::mm", [("nvjet_tst_128x64", 10.0), ("splitKreduce_kernel", 2.0)],
              _cpu("aten::matmul", (), step), shapes=[[32, d], [d, n_qkv]])
    copy = _cpu("aten::copy_", [("Memcpy DtoD (Device -> Device)", 1.0)], step)
    events = [step, attn, mm, mm.cpu_parent, copy, _cpu("cuLaunchKernelEx"),
              _cpu("cudaLaunchKernel"), _dev("fastdiff::attention", 0, 50, annotation=True),
              _dev("_attention_kernel", 0, 40), _dev("_attention_combine_kernel", 41, 4),
              _dev("nvjet_tst_128x64", 46, 10), _dev("splitKreduce_kernel", 57, 2),
              _dev("Memcpy DtoD (Device -> Device)", 60, 1), _dev("_add_rms_norm_kernel", 62, 3)]
    a = pt.analyse(events, {"attention": [1, 1000, 2000]}, cuda=True, cfg=cfg, elem=2,
                   tokens_fed=32, bandwidth=1e9, flop_rate=1e12)
    assert (a["kernels"], a["memcpy"], a["memset"], a["unlinked"]) == (5, 1, 0, 1)
    assert a["host_launch_calls"] == 2 and a["span_us"] == 65 and a["busy_us"] == 59
    groups = {g["group"]: g for g in a["groups"]}
    assert set(groups) == {"attention", "gemm qkv", "add_rms_norm"}
    assert groups["attention"]["kernels"] == 2 and groups["attention"]["floor_us"] == 1.0
    qkv = groups["gemm qkv"]
    assert qkv["op_calls"] == 1 and qkv["bytes"] == (32 * d + d * n_qkv + 32 * n_qkv) * 2
    assert qkv["floor_us"] == pytest.approx(1e6 * qkv["bytes"] / 1e9)
    kernels = {k["name"]: k for k in a["kernel_table"]}
    assert kernels["_attention_kernel"]["role"] == "main"
    assert kernels["_attention_combine_kernel"]["role"] == "aux"
    assert kernels["splitKreduce_kernel"]["role"] == "aux"
    assert kernels["nvjet_tst_128x64"]["floor_us"] == qkv["floor_us"]
    assert kernels["_add_rms_norm_kernel"]["groups"] == ["add_rms_norm"]


def test_op_cost_reads_shapes_only():
    q = torch.zeros(1, 32, 4, 16)
    kv = torch.zeros(1, 96, 4, 16)
    nbytes, flops = sp.op_cost("attention", (q, kv, kv, None, None), q)
    assert flops == 4 * 32 * 96 * 4 * 16 and nbytes == 4 * (2 * q.numel() + 2 * kv.numel())
    assert sp.op_cost("unknown_op", (q, 3), (q, None)) == (2 * 4 * q.numel(), 0)


def test_readme_section_ignores_step_profile_rows(report, tmp_path):
    """fastdiff.bench.report keeps end-to-end rows only: a profile row on CUDA is not one."""
    from fastdiff.bench.report import update_readme
    _, rows, _ = report
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.jsonl").write_text(
        "".join(json.dumps({**r, "device": "cuda"}) + "\n" for r in rows))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    assert update_readme(readme, tmp_path / "results").startswith("No GPU results")
