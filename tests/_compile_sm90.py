"""Compile every Triton kernel for sm_90 in every launch configuration the launchers can pick.

Run by tests/test_kernels_compile.py in a subprocess WITHOUT TRITON_INTERPRET (under the
interpreter the kernels are no longer JIT functions). Prints one line per compiled variant and a
final 'OK <count>'; exits non-zero on the first failure or shared-memory overflow."""
from __future__ import annotations

import os
import sys
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastdiff.kernels import attention as attn_mod
from fastdiff.kernels import lm_head_confidence as lm_mod
from fastdiff.kernels import select_commit as sc_mod

SMEM_LIMIT = 232448  # H100 per-block shared memory (bytes)
TARGET = GPUTarget("cuda", 90, 128)
TY = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def compile_one(fn, sig: dict, constexprs: dict, num_warps: int, num_stages: int, label: str):
    sig = dict(sig)
    for name in constexprs:
        sig[name] = "constexpr"
    missing = set(fn.arg_names) - set(sig)
    assert not missing, f"{label}: signature lacks {missing}"
    src = ASTSource(fn=fn, signature={n: sig[n] for n in fn.arg_names}, constexprs=constexprs)
    t = time.time()
    k = triton.compile(src, target=TARGET, options={"num_warps": num_warps,
                                                     "num_stages": num_stages})
    shared = k.metadata.shared
    print(f"{label}: shared={shared} B, {time.time() - t:.2f}s", flush=True)
    if shared > SMEM_LIMIT:
        raise SystemExit(f"FAIL {label}: shared memory {shared} > {SMEM_LIMIT}")
    return 1


def select_commit_variants():
    sig = {"x_ptr": "*i64", "x0_ptr": "*i64", "conf_ptr": "*fp32", "bstart_ptr": "*i64",
           "param_ptr": "*i32", "commit_ptr": "*i8", "committed_ptr": "*i32", "left_ptr": "*i32",
           "L": "i32", "Lb": "i32", "stride_x": "i32", "stride_x0": "i32", "stride_conf": "i32"}
    for cfg in sc_mod.launch_configs():
        s = dict(sig, param_ptr="*i32" if cfg["MODE"] == 0 else "*fp32")
        ce = {"MODE": cfg["MODE"], "BLOCK_L": cfg["BLOCK_L"], "K_MAX": cfg["K_MAX"]}
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
    ints = ["Sq", "H", "GROUP", "chunk", "sqb", "sqs", "sqh", "skb", "sks", "skh", "svb", "svs",
            "svh", "sob", "sos", "soh"]
    seen = set()
    for dt, D, split, cfg in attn_mod.launch_configs():
        t = TY[dt]
        sig = {"q_ptr": f"*{t}", "k_ptr": f"*{t}", "v_ptr": f"*{t}", "o_ptr": f"*{t}",
               "start_ptr": "*i32", "end_ptr": "*i32",
               "po_ptr": "*fp32" if split else f"*{t}", "pml_ptr": "*fp32" if split else f"*{t}",
               "qk_scale": "fp32", **{n: "i32" for n in ints}}
        ce = {"HEAD_DIM": D, "BLOCK_M": cfg["BLOCK_M"], "BLOCK_N": cfg["BLOCK_N"], "SPLIT": split,
              "UPCAST": False, "IEEE": dt == torch.float32}
        yield (attn_mod._attention_kernel, sig, ce, cfg["num_warps"], cfg["num_stages"],
               f"attention {t} {ce} w{cfg['num_warps']} s{cfg['num_stages']}")
        key = (t, D, cfg["BLOCK_M"])
        if split and key not in seen:
            seen.add(key)
            csig = {"po_ptr": "*fp32", "pml_ptr": "*fp32", "o_ptr": f"*{t}", "Sq": "i32",
                    "H": "i32", "BH": "i32", "n_splits": "i32", "sob": "i32", "sos": "i32",
                    "soh": "i32"}
            yield (attn_mod._attention_combine_kernel, csig,
                   {"HEAD_DIM": D, "BLOCK_M": cfg["BLOCK_M"]}, 4, 3,
                   f"attention_combine {t} D{D} M{cfg['BLOCK_M']}")


def quick(variant) -> bool:
    """The default-run subset: every kernel and MODE in bf16 (the GPU dtype), the smallest and
    largest select_commit blocks; the full sweep (every dtype and block) is the slow test."""
    fn, sig, ce, _, _, _ = variant
    if any(t in ("*fp32", "*fp16") for n, t in sig.items() if n in ("q_ptr", "h_ptr")):
        return False
    if fn is sc_mod._select_commit_kernel:
        return ce["BLOCK_L"] in (16, sc_mod.MAX_BLOCK_L) and ce["K_MAX"] in (16, ce["BLOCK_L"])
    return True


def main(args: list) -> None:
    assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"
    gens = {"select_commit": select_commit_variants, "lm_head": lm_head_variants,
            "attention": attention_variants}
    only_quick = "--quick" in args
    names = [a for a in args if not a.startswith("--")] or list(gens)
    n = 0
    for name in names:
        for variant in gens[name]():
            if not only_quick or quick(variant):
                n += compile_one(*variant)
    print(f"OK {n}")


if __name__ == "__main__":
    main(sys.argv[1:])
