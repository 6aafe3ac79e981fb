"""torch.profiler events of one denoising step -> its kernel launches, grouped by the op that
launched them, each group and kernel against its floor (fastdiff.bench.step_profile), and the
markdown of those tables.

GPU: device kernel events (memcpy / memset apart), linked to the innermost op around their
launch (FunctionEvent.kernels): a "fastdiff::<op>" range (the step's ops backend seen through
step_profile.OpLedger), else an aten GEMM (named by its weight's shape), else the embedding
gather; kernels the profiler left unlinked are named by their kernel name. CPU: aten ops that do
work stand in for kernels."""
from __future__ import annotations

import math
from collections import Counter, defaultdict

from torch.autograd import DeviceType

from ..config import ModelConfig

OP_GROUPS = {"lm_head_confidence": "lm_head", "silu_mul_packed": "silu_mul",
             "select_topk_commit": "select_commit", "select_threshold_commit": "select_commit",
             "select_factor_commit": "select_commit"}
# (mkldnn::_linear_pointwise: the CPU's fp32 GEMM on a packed weight [N, K], ops/cpu_gemm.py)
MM_OPS = frozenset({"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul",
                    "mkldnn::_linear_pointwise"})
EMBED_OPS = frozenset({"aten::index", "aten::embedding", "aten::index_select"})
LAUNCH_APIS = frozenset({"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                         "cuLaunchKernelEx", "cudaLaunchCooperativeKernel"})
# by kernel name, for kernels the profiler did not link to an op
NAME_GROUPS = (("attention", "attention"), ("lm_head", "lm_head"), ("rms_norm", "add_rms_norm"),
               ("rope", "rope_kv"), ("silu", "silu_mul"), ("step_prepare", "step_prepare"),
               ("select_commit", "select_commit"), ("freeze", "freeze_finished"))
GEMM_NAMES = ("gemm", "nvjet", "cutlass", "xmma", "gemv", "splitk", "cublas")
APPROX = frozenset({"add_rms_norm", "rope_kv", "silu_mul", "step_prepare", "select_commit",
                    "freeze_finished", "embedding"})
NOOP_COMPOSITES = frozenset({"aten::to", "aten::contiguous", "aten::reshape", "aten::flatten",
                             "aten::type_as", "aten::matmul", "aten::lift_fresh",
                             "aten::resolve_conj", "aten::resolve_neg"})
SYNC_NAMES = frozenset({"Context Sync", "Stream Sync", "Event Sync", "Stream Wait Event"})
CPU_LABEL = "cpu (aten ops, not GPU kernels)"


def _chain(e) -> list:
    out = []
    while e is not None:
        out.append(e)
        e = e.cpu_parent
    return out


def _gemm(e, weights: dict, elem: int):
    """A GEMM event -> (group, bytes, FLOPs) from its recorded shapes x [.., K] (M rows) and
    W.T [K, N] (aten) or W [N, K] (oneDNN's packed weight); the group names the weight."""
    mats = [list(s) for s in (e.input_shapes or []) if isinstance(s, (list, tuple)) and len(s) >= 2]
    if len(mats) < 2:
        return "gemm (shape not recorded)", 0, 0
    a, w = mats[0], mats[1]
    M, K = math.prod(a[:-1]), a[-1]
    N = w[-1] if w[-2] == K else w[-2]
    names = [n for n, s in weights.items() if s == (K, N)] or \
            [n for n, s in weights.items() if s == (N, K)]
    group = "gemm " + "/".join(names) if names else f"gemm other ({K}x{N})"
    return group, (M * K + math.prod(w) + M * N) * elem, 2 * M * K * N


def _group(e, weights: dict, elem: int):
    """An op event -> (group, gemm cost or None): the outermost fastdiff::<op> around it, else
    the GEMM it belongs to, else the embedding gather, else "other (op)"."""
    chain = _chain(e)
    ann = [c.name for c in chain if c.name.startswith("fastdiff::")]
    if ann:
        name = ann[-1].split("::", 1)[1]
        return OP_GROUPS.get(name, name), None
    mm = next((c for c in chain if c.name in MM_OPS and c.name != "aten::matmul"), None)
    if mm is not None:
        g, nbytes, flops = _gemm(mm, weights, elem)
        return g, (id(mm), nbytes, flops)
    return ("embedding" if e.name in EMBED_OPS else f"other ({e.name})"), None


def _name_group(name: str) -> str:
    low = name.lower()
    return next((g for key, g in NAME_GROUPS if key in low), None) or \
        ("gemm (not linked to an op)" if any(k in low for k in GEMM_NAMES) else "unattributed")


def _cpu_kernels(events) -> list:
    """CPU mode: aten ops that do work (not views / allocations / no-op composites) and have no
    such op below them, as (name, us, event)."""
    from .kernel_count import is_free

    def free(e):
        return e.name in NOOP_COMPOSITES or is_free(e.name.replace("::", "."))

    def works(e):
        return not free(e) or any(works(c) for c in e.cpu_children)
    ops = [e for e in events if e.device_type == DeviceType.CPU
           and e.name.startswith(("aten::", "mkldnn::"))]  # mkldnn: the CPU's packed GEMMs
    return [(e.name, e.cpu_time_total, e) for e in ops
            if not free(e) and not any(works(c) for c in e.cpu_children)]


def launches(events, cuda: bool):
    """-> ([(kernel name, us, linked op event or None)], extra counts): GPU kernels from the
    profiler's CUDA events, linked to the op that launched them; on a CPU, aten ops."""
    if not cuda:
        ks = _cpu_kernels(events)
        span = (min(e.time_range.start for *_, e in ks), max(e.time_range.end for *_, e in ks)) \
            if ks else (0, 0)
        return ks, dict(memcpy=0, memset=0, memcpy_memset_us=0.0, host_launch_calls=None,
                        span_us=span[1] - span[0], unlinked=0)
    dev = [e for e in events if e.device_type == DeviceType.CUDA
           and not getattr(e, "is_user_annotation", False)
           and not e.name.startswith(("fastdiff::", "ProfilerStep")) and e.name not in SYNC_NAMES]
    mem = [e for e in dev if e.name.startswith(("Memcpy", "Memset"))]
    kern = [e for e in dev if not e.name.startswith(("Memcpy", "Memset"))]
    left = Counter(e.name for e in kern)
    out = []
    for e in events:
        for k in getattr(e, "kernels", []) if e.device_type == DeviceType.CPU else []:
            if left[k.name] > 0:
                left[k.name] -= 1
                out.append((k.name, k.duration, e))
    for n, c in left.items():  # not linked to an op: the name's mean duration
        us = [e.time_range.end - e.time_range.start for e in kern if e.name == n]
        out += [(n, sum(us) / len(us), None)] * c
    span = (min(e.time_range.start for e in dev), max(e.time_range.end for e in dev)) \
        if dev else (0, 0)
    return out, dict(memcpy=sum(e.name.startswith("Memcpy") for e in mem),
                     memset=sum(e.name.startswith("Memset") for e in mem),
                     memcpy_memset_us=sum(e.time_range.end - e.time_range.start for e in mem),
                     host_launch_calls=sum(e.name in LAUNCH_APIS for e in events),
                     span_us=span[1] - span[0], unlinked=sum(left.values()))


def weight_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(K, N) of each GEMM x [M, K] @ W.T [K, N] of a layer, and of the LM head."""
    d, hd, m = cfg.d_model, cfg.head_dim, cfg.mlp_hidden_size
    return {"qkv": (d, (cfg.n_heads + 2 * cfg.n_kv_heads) * hd), "attn_out": (cfg.n_heads * hd, d),
            "gate_up": (d, 2 * m), "ff_out": (m, d), "lm_head": (d, cfg.vocab_size)}


def _add(cost: dict, group: str, nbytes: int, flops: int) -> None:
    c = cost.setdefault(group, [0, 0, 0])
    c[0], c[1], c[2] = c[0] + 1, c[1] + nbytes, c[2] + flops


def analyse(events, op_costs: dict, *, cuda: bool, cfg: ModelConfig, elem: int, tokens_fed: int,
            bandwidth: float, flop_rate: float) -> dict:
    """Profiler events of one step -> counts, times, and the group and kernel tables."""
    ks, extra = launches(events, cuda)
    weights, cost, seen = weight_shapes(cfg), {g: list(v) for g, v in op_costs.items()}, set()
    us_of, calls_of = defaultdict(Counter), defaultdict(Counter)  # group -> kernel name -> ..
    for name, us, e in ks:
        g, gemm = _group(e, weights, elem) if e is not None else (_name_group(name), None)
        if gemm is not None and gemm[0] not in seen:
            seen.add(gemm[0])
            _add(cost, g, gemm[1], gemm[2])
        elif g == "embedding" and id(e) not in seen:  # rows of wte gathered: read + write
            seen.add(id(e))
            _add(cost, g, (2 * cfg.d_model * elem + 8) * tokens_fed, 0)
        us_of[g][name] += us
        calls_of[g][name] += 1
    busy = sum(us for _, us, _ in ks)
    groups = []
    for g in sorted(set(us_of) | set(cost), key=lambda g: -sum(us_of[g].values())):
        us = sum(us_of[g].values())
        calls, nbytes, flops = cost.get(g, (None, 0, 0))
        fb, ff = 1e6 * nbytes / bandwidth, 1e6 * flops / flop_rate
        floor = max(fb, ff) or None
        groups.append(dict(group=g, op_calls=calls, kernels=sum(calls_of[g].values()),
                           total_us=us, share=us / busy if busy else None, bytes=nbytes or None,
                           flops=flops or None, floor_us=floor,
                           bound=None if floor is None else "flops" if ff > fb else "bytes",
                           floor_fraction=floor / us if floor and us else None,
                           approx=g in APPROX,
                           main_kernel=max(us_of[g], key=us_of[g].get) if us_of[g] else None))
    table = {}
    for g, names in us_of.items():
        for n, us in names.items():
            k = table.setdefault(n, dict(name=n, groups=[], calls=0, total_us=0.0, floor_us=None,
                                         role=""))
            k["groups"].append(g)
            k["calls"] += calls_of[g][n]
            k["total_us"] += us
    for row in groups:
        if row["floor_us"] is None or row["main_kernel"] is None:
            continue
        for k in table.values():
            if row["group"] in k["groups"] and k["name"] != row["main_kernel"] and not k["role"]:
                k["role"] = "aux"
        k = table[row["main_kernel"]]
        k["floor_us"], k["role"] = (k["floor_us"] or 0.0) + row["floor_us"], "main"
    for k in table.values():
        k.update(mean_us=k["total_us"] / k["calls"], share=k["total_us"] / busy if busy else None,
                 floor_fraction=k["floor_us"] / k["total_us"]
                 if k["floor_us"] and k["total_us"] else None)
    return dict(kernels=len(ks), kernels_per_layer=len(ks) / cfg.n_layers, busy_us=busy, **extra,
                floor_sum_us=sum(r["floor_us"] or 0.0 for r in groups), groups=groups,
                kernel_table=sorted(table.values(), key=lambda k: -k["total_us"]))


def _f(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def summary_md(rows: list[dict]) -> str:
    lines = ["| context | step | kernels (profiler) | per layer | memcpy / memset | CPU count: "
             "step (per layer, outside) | host launch calls | busy ms | span ms | step floor ms "
             "| floor / busy |", "|---" * 11 + "|"]
    for r in rows:
        c, m = r["config"], r["metrics"]
        cpu = f"{m['cpu_count_step']} ({m['cpu_count_per_layer']}, {m['cpu_count_outside']})" \
            if m.get("cpu_count_step") is not None else f"- ({m.get('cpu_count_error') or 'off'})"
        lines.append(f"| {c['context']} | {c['phase']} | {m['kernels']} | "
                     f"{_f(m['kernels_per_layer'])} | {m['memcpy']} / {m['memset']} | {cpu} | "
                     f"{_f(m['host_launch_calls'])} | {_f(m['busy_us'] / 1e3, 3)} | "
                     f"{_f(m['span_us'] / 1e3, 3)} | {_f(m['step_floor_us'] / 1e3, 3)} | "
                     f"{_pct(m['floor_fraction_busy'])} |")
    return "\n".join(lines) + "\n"


def groups_md(r: dict) -> str:
    lines = [f"\n{r['config']['phase']} at context {r['config']['context']}: kernel groups\n",
             "| group | op calls | kernels | total us | share | MB moved | GFLOP | floor us "
             "(bound) | floor / time |", "|---" * 9 + "|"]
    for g in r["groups"]:
        mb = _f(g["bytes"] / 1e6, 2) + (" ~" if g["approx"] else "") if g["bytes"] else "-"
        lines.append(f"| {g['group']} | {_f(g['op_calls'])} | {g['kernels']} | "
                     f"{_f(g['total_us'])} | {_pct(g['share'])} | {mb} | "
                     f"{_f(g['flops'] / 1e9, 2) if g['flops'] else '-'} | "
                     f"{_f(g['floor_us'])} ({g['bound'] or '-'}) | {_pct(g['floor_fraction'])} |")
    return "\n".join(lines) + "\n"


def kernels_md(r: dict) -> str:
    lines = [f"\n{r['config']['phase']} at context {r['config']['context']}: per kernel "
             f"({r['config']['activity']})\n", "| kernel | group | calls | total us | mean us | "
             "share | floor us | floor / time |", "|---" * 8 + "|"]
    for k in r["kernels"]:
        fl = "aux" if k["role"] == "aux" else _f(k["floor_us"])
        name = k["name"].replace("|", "\\|")
        lines.append(f"| {name} | {', '.join(k['groups'])} | {k['calls']} | "
                     f"{_f(k['total_us'])} | {_f(k['mean_us'], 2)} | {_pct(k['share'])} | {fl} | "
                     f"{_pct(k['floor_fraction'])} |")
    return "\n".join(lines) + "\n"
