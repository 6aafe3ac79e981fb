"""Compile every Triton kernel for sm_90 in every launch configuration the launchers can pick.

Run by tests/test_kernels_compile.py in a subprocess WITHOUT TRITON_INTERPRET (under the
interpreter the kernels are no longer JIT functions). Each variant's PTX is also assembled again
by the ptxas that triton bundles, with -v, for its register count and spill bytes. Prints one
line per compiled variant and a final 'OK <count>'; exits non-zero on the first failure,
shared-memory overflow or register spill."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import sm_arch_from_capability
from triton.compiler import ASTSource

from fastdiff.kernels import attention as attn_mod
from fastdiff.kernels import lm_head_confidence as lm_mod
from fastdiff.kernels import select_commit as sc_mod

SMEM_LIMIT = 232448  # H100 per-block shared memory (bytes)
TARGET = GPUTarget("cuda", 90, 128)
TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def ptxas_usage(ptx: str) -> dict:
    """Registers and spill bytes of one kernel: its PTX through triton's bundled ptxas -v."""
    ptxas = triton.knobs.nvidia.ptxas.path
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={sm_arch_from_capability(TARGET.arch)}",
                               src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if proc.returncode or not regs or not spill:
        raise SystemExit(f"ptxas -v gave no resource usage (rc {proc.returncode}):\n{log}")
    return {"regs": int(regs[1]), "spill_st": int(spill[1]), "spill_ld": int(spill[2])}


def _aligned(fn, sig: dict) -> dict:
    """The runtime specialization at LLaDA-8B / Dream-7B shapes (approximately): every pointer
    16-byte aligned and every integer a multiple of 16 (tt.divisibility 16), as the JIT marks
    them; this enables vectorized loads and cp.async pipelining, a different register budget."""
    return {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
            if sig[n].startswith("*") or sig[n] in ("i32", "i64", "u32", "u64")}


def compile_one(fn, sig: dict, constexprs: dict, num_warps: int, num_stages: int, label: str):
    """Compiles one launch configuration twice: for any shape (no alignment known) and aligned
    (_aligned: the model shapes); each must fit shared memory and not spill."""
    sig = dict(sig)
    for name in constexprs:
        sig[name] = "constexpr"
    missing = set(fn.arg_names) - set(sig)
    assert not missing, f"{label}: signature lacks {missing}"
    signature = {n: sig[n] for n in fn.arg_names}
    for spec, attrs in (("any", {}), ("aligned", _aligned(fn, signature))):
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        t = time.time()
        k = triton.compile(src, target=TARGET, options={"num_warps": num_warps,
                                                         "num_stages": num_stages})
        shared = k.metadata.shared
        use = ptxas_usage(k.asm["ptx"])
        what = f"{label} [{spec}]"
        print(f"{what}: shared={shared} B, regs={use['regs']}, spill st/ld={use['spill_st']}/"
              f"{use['spill_ld']} B, {time.time() - t:.2f}s", flush=True)
        if shared > SMEM_LIMIT:
            raise SystemExit(f"FAIL {what}: shared memory {shared} > {SMEM_LIMIT}")
        if use["spill_st"] or use["spill_ld"]:
            raise SystemExit(f"FAIL {what}: register spills ({use['regs']} registers, "
                             f"{use['spill_st']} B stores, {use['spill_ld']} B loads)")
    return 1


def _sc_extreme(ce: dict) -> bool:
    """select_commit's smallest and largest blocks at their extreme K_MAX values."""
    return ce["BLOCK_L"] in (16, sc_mod.MAX_BLOCK_L) and ce["K_MAX"] in (16, ce["BLOCK_L"])


def select_commit_variants():
    sig = {"x_ptr": "*i64", "x0_ptr": "*i64", "conf_ptr": "*fp32", "bstart_ptr": "*i64",
           "param_ptr": "*i32", "commit_ptr": "*i8", "committed_ptr": "*i32", "left_ptr": "*i32",
           "step_ptr": "*i64", "nfe_ptr": "*i32", "L": "i32", "Lb": "i32", "stride_x": "i32",
           "stride_x0": "i32", "stride_conf": "i32"}
    for cfg in sc_mod.launch_configs():
        s = dict(sig, param_ptr="*i32" if cfg["MODE"] == 0 else "*fp32")
        # COUNT (the step/nfe counters: two scalar read-modify-writes) on everywhere (the fused
        # step's setting), off too where _sc_extreme (the quick subset)
        for c in (True, False) if _sc_extreme(cfg) else (True,):
            ce = {"MODE": cfg["MODE"], "BLOCK_L": cfg["BLOCK_L"], "K_MAX": cfg["K_MAX"],
                  "COUNT": c}
            yield (sc_mod._select_commit_kernel, s, ce, cfg["num_warps"], 3,
                   f"select_commit {ce} w{cfg['num_warps']}")


def lm_head_variants():
    for dt, cfg in lm_mod.launch_configs():
        t = TY[dt]
        sig = {"h_ptr": f"*{t}", "rowmap_ptr": "*i32", "w_ptr": f"*{t}", "seed_ptr": "*i64",
               "step_ptr": "*i64", "posb_ptr": "*i64", "part_ptr": "*fp32", "pidx_ptr": "*i32",
               "N": "i32", "Lb": "i32", "d": "i32", "V": "i32", "n_tiles": "i32",
               "tiles_per_split": "i32", "stride_hb": "i32", "stride_hs": "i32",
               "stride_rm": "i32", "stride_w": "i32", "scale": "fp32", "temperature": "fp32",
               "suppress_id": "i32"}
        for sample in (False, True):
            ce = {"SAMPLE": sample, "BLOCK_N": cfg["BLOCK_N"], "BLOCK_V": cfg["BLOCK_V"],
                  "BLOCK_K": cfg["BLOCK_K"], "UPCAST": dt == torch.float32,
                  "IEEE": dt == torch.float32}
            yield (lm_mod._lm_head_partial_kernel, sig, ce, cfg["num_warps"],
                   cfg["num_stages"], f"lm_head_partial {t} {ce}")
    sig = {"part_ptr": "*fp32", "pidx_ptr": "*i32", "rowmap_ptr": "*i32", "seed_ptr": "*i64",
           "step_ptr": "*i64", "posb_ptr": "*i64", "x0_ptr": "*i64", "conf_ptr": "*fp32",
           "N": "i32", "Lb": "i32", "n_splits": "i32", "stride_rm": "i32", "eos_id": "i32",
           "eot_id": "i32"}
    for mode in lm_mod.MODES.values():
        ce = {"MODE": mode, "BLOCK_R": lm_mod.BLOCK_R, "BLOCK_S": lm_mod.BLOCK_S}
        yield (lm_mod._lm_head_combine_kernel, sig, ce, 4, 3, f"lm_head_combine {ce}")


def attention_variants():
    """Every launch configuration, plain and BLOCK_CAUSAL (block diffusion's prefill; SDAR-4B/8B
    are head_dim 128 with 4:1 GQA, i.e. the packed-row configs of D 128)."""
    ints = ["Sq", "Hkv", "GROUP", "chunk", "q_start", "bk", "sqb", "sqs", "sqh", "skb", "sks",
            "skh", "svb", "svs", "svh", "sob", "sos", "soh"]
    seen = set()
    for dt, D, split, cfg in attn_mod.launch_configs():
        t = TY[dt]
        sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}",
               "start_ptr": "*i32", "end_ptr": "*i32",
               "po_ptr": "*fp32" if split else f"*{t}", "pml_ptr": "*fp32" if split else f"*{t}",
               "qk_scale": "fp32", **{n: "i32" for n in ints}}
        for causal in (False, True):
            ce = {"HEAD_DIM": D, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"],
                  "SPLIT": split, "BLOCK_CAUSAL": causal, "UPCAST": False,
                  "IEEE": dt == torch.float32}
            yield (attn_mod._attention_kernel, sig, ce, cfg["num_warps"], cfg["num_stages"],
                   f"attention {t} {ce} w{cfg['num_warps']} s{cfg['num_stages']}")
        key = (t, D, cfg["BLOCK_M"])
        if split and key not in seen:
            seen.add(key)
            csig = {"po_ptr": "*fp32", "pml_ptr": "*fp32", "o_ptr": f"*{t}", "Sq": "i32",
                    "Hkv": "i32", "GROUP": "i32", "BH": "i32", "n_splits": "i32", "sob": "i32",
                    "sos": "i32", "soh": "i32"}
            yield (attn_mod._attention_combine_kernel, csig,
                   {"HEAD_DIM": D, "BLOCK_M": cfg["BLOCK_M"]},
                   attn_mod.combine_warps(cfg["BLOCK_M"], D), 3,
                   f"attention_combine {t} D{D} M{cfg['BLOCK_M']}")


def quick(variant) -> bool:
    """The default-run subset: every kernel and MODE in bf16 (the GPU dtype), the smallest and
    largest select_commit blocks; the full sweep (every dtype and block) is the slow test."""
    fn, sig, ce, _, _, _ = variant
    if any(t in ("*fp32", "*fp16") for n, t in sig.items() if n in ("q_ptr", "h_ptr", "o_ptr")):
        return False
    if fn is sc_mod._select_commit_kernel:
        return _sc_extreme(ce)
    return True


# Integer arguments that can be 1 at run time, by kernel (label prefix): triton's JIT then
# compiles them as constants (a specialization the interpreter never makes), e.g. MHA's GROUP,
# a one-token query, the eager loop's step 1, a single stop id.
ONES = {"attention ": ("GROUP", "Sq", "bk", "q_start", "Hkv"),
        "attention_combine": ("Sq", "GROUP", "Hkv"),
        "lm_head_partial": ("N", "Lb", "stride_rm", "tiles_per_split"),
        "lm_head_combine": ("N", "Lb", "n_splits", "stride_rm"),
        "step_prepare": ("block_arg", "i_arg", "shift", "S", "Lb"),
        "freeze_finished": ("n_stop", "G", "prompt_len"),
        "select_commit": ("Lb",), "rope_kv": ("S", "HKV"), "philox_normal": ("seed", "stream")}


def _generators() -> dict:
    return {"select_commit": select_commit_variants, "lm_head": lm_head_variants,
            "attention": attention_variants, "add_rms_norm": add_rms_norm_variants,
            "rope_kv": rope_kv_variants, "silu_mul": silu_mul_variants,
            "freeze_finished": freeze_finished_variants, "step_prepare": step_prepare_variants,
            "philox_normal": philox_normal_variants}


def ones_variants():
    """The first default-run configuration of each kernel in ONES with those integers = 1."""
    for gen in _generators().values():
        done = set()
        for fn, sig, ce, warps, stages, label in gen():
            prefix = next((p for p in ONES if label.startswith(p)), None)
            if prefix is None or prefix in done or not quick((fn, sig, ce, warps, stages, label)):
                continue
            done.add(prefix)
            ones = {n: 1 for n in ONES[prefix] if n in fn.arg_names}
            yield fn, sig, {**ce, **ones}, warps, stages, f"{label} with {sorted(ones)} = 1"


def main(args: list) -> None:
    assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"
    gens = {**_generators(), "ones": ones_variants}
    only_quick = "--quick" in args
    names = [a for a in args if not a.startswith("--")] or list(gens)
    n = 0
    for name in names:
        for variant in gens[name]():
            if not only_quick or quick(variant):
                n += compile_one(*variant)
    print(f"OK {n}")


# ----------------------------------------------------------------------------- fused layer ops
# bf16 at LLaDA-8B (d 4096, 32 x 128 MHA, mlp 12288) and Dream-7B (d 3584, 28 / 4 heads x 128,
# mlp 18944) shapes: every configuration the launchers pick there.

def add_rms_norm_variants():
    from fastdiff.kernels import add_rms_norm as mod
    ptrs = {n: "*bf16" for n in ("x_ptr", "delta_ptr", "w_ptr", "s_ptr", "y_ptr")}
    sig = {**ptrs, "d": "i32", "eps": "fp32", "stride_x": "i32", "stride_delta": "i32",
           "stride_s": "i32", "stride_y": "i32"}
    for cfg in mod.launch_configs((4096, 3584)):  # + the chunked path (d > MAX_SINGLE_D)
        for has_delta, store_s in ((True, True), (False, False), (False, True)):
            ce = {"HAS_DELTA": has_delta, "STORE_S": store_s, "BLOCK_D": cfg["BLOCK_D"],
                  "SINGLE": cfg["SINGLE"], "BF16_RNE": False}
            yield (mod._add_rms_norm_kernel, sig, ce, cfg["num_warps"], cfg["num_stages"],
                   f"add_rms_norm bf16 {ce} w{cfg['num_warps']}")


def rope_kv_variants():
    from fastdiff.kernels import rope_kv as mod
    sig = {"qkv_ptr": "*bf16", "pos_ptr": "*i64", "slot_ptr": "*i32", "cos_ptr": "*fp32",
           "sin_ptr": "*fp32", "q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16",
           "qn_ptr": "*bf16", "kn_ptr": "*bf16", "eps": "fp32",
           **{n: "i32" for n in ("S", "T", "T_kv", "H", "HKV", "stride_qkv_b", "stride_qkv_s",
                                 "stride_pos", "stride_slot", "stride_kb", "stride_kh",
                                 "stride_kt", "stride_vb", "stride_vh", "stride_vt")}}
    # LLaDA-8B, Dream-7B, SDAR-4B/8B (32 / 8 heads x 128, QK-norm)
    for D, cfg in mod.launch_configs(((32, 32, 128), (28, 4, 128), (32, 8, 128))):
        for qk_norm in (False, True):
            ce = {"HALF": D // 2, "BLOCK_HALF": cfg["BLOCK_HALF"], "BLOCK_H": cfg["BLOCK_H"],
                  "QK_NORM": qk_norm, "BF16_RNE": False}
            yield (mod._rope_kv_kernel, sig, ce, cfg["num_warps"], cfg["num_stages"],
                   f"rope_kv bf16 {ce} w{cfg['num_warps']}")


def silu_mul_variants():
    from fastdiff.kernels import silu_mul as mod
    sig = {"gu_ptr": "*bf16", "out_ptr": "*bf16", "m": "i32", "stride_gu": "i32",
           "stride_out": "i32"}
    for cfg in mod.launch_configs((12288, 18944)):
        ce = {"BLOCK_M": cfg["BLOCK_M"], "BF16_RNE": False}
        yield (mod._silu_mul_kernel, sig, ce, cfg["num_warps"], cfg["num_stages"],
               f"silu_mul bf16 {ce} w{cfg['num_warps']}")


def freeze_finished_variants():
    from fastdiff.kernels import freeze_finished as mod
    sig = {"x_ptr": "*i64", "active_ptr": "*i8", "stop_ptr": "*i64", "n_stop": "i32",
           "prompt_len": "i32", "G": "i32", "stride_x": "i32", "eos_id": "i32",
           "mask_id": "i32"}
    for cfg in mod.launch_configs():  # every generation length up to ~4096
        ce = {"BLOCK_G": cfg["BLOCK_G"]}
        yield (mod._freeze_finished_kernel, sig, ce, cfg["num_warps"],
               cfg["num_stages"],
               f"freeze_finished {ce} w{cfg['num_warps']}")


def philox_normal_variants():
    """The random-weight kernel: seed and stream as i64 / i32 arguments (ONES: both as 1)."""
    from fastdiff.kernels import philox_normal as mod
    sig = {"out_ptr": "*fp32", "n": "i64", "seed": "i64", "stream": "i32"}
    yield (mod._philox_normal_kernel, sig, {"BLOCK": mod.BLOCK}, 4, 3,
           f"philox_normal BLOCK {mod.BLOCK}")


def step_prepare_variants():
    """Every chunk configuration, for the eager (scalar) and graph (device cursor) forms, the
    block-relative and fixed spans, with and without cancel and the fixed schedule."""
    from fastdiff.kernels import step_prepare as mod
    sig = {"x_ptr": "*i64", "pos_ptr": "*i64", "active_ptr": "*i8", "cancel_ptr": "*i8",
           "m0_ptr": "*i64", "cursor_ptr": "*i32", "ids_ptr": "*i64", "fpos_ptr": "*i64",
           "slot_ptr": "*i32", "rows_ptr": "*i64", "rmap_ptr": "*i32", "bstart_ptr": "*i32",
           "pbase_ptr": "*i64", "k_ptr": "*i64", "ratio_ptr": "*fp32",
           **{n: "i32" for n in ("block_arg", "i_arg", "lo_arg", "prompt_len", "Lb", "S",
                                 "stride_x", "stride_p", "mask_id", "shift")}}
    for cfg in mod.launch_configs():
        for dev, lo_blk, wfb, cancel, steps, ratios in (
                (False, False, False, False, 0, False), (True, True, False, True, 4, False),
                (True, False, True, True, 0, False), (True, True, True, True, 0, True)):
            ce = {"STEPS": steps, "RATIOS": ratios, "FROM_DEVICE": dev, "LO_FROM_BLOCK": lo_blk,
                  "WRITE_FROM_BLOCK": wfb, "HAS_CANCEL": cancel, "BLOCK_S": cfg["BLOCK_S"],
                  "BLOCK_L": cfg["BLOCK_L"]}
            yield (mod._step_prepare_kernel, sig, ce, cfg["num_warps"], 3,
                   f"step_prepare {ce} w{cfg['num_warps']}")


if __name__ == "__main__":
    main(sys.argv[1:])
