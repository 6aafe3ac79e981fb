// Device-side argument structs of the control and progress kernels (shared by control.cu,
// progress.cu and runner.cu). Passed by value as the single kernel parameter.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "fastdiff.h"

namespace fastdiff {

constexpr int kMaxBatch = 1024;  // shared per-row counters in one thread block
constexpr int kThreads = 256;

struct ControlArgs {
  const long long* x;       // [B, L]
  const bool* active;       // [B]
  int* ctl;                 // [CTL_WORDS]
  long long* k;             // [B] or nullptr
  long long* m0;            // [B] or nullptr
  const bool* cancel;       // [B] or nullptr: set by the host while a generation runs
  // Conditional handles the kernel sets (none for a direct launch): the step pick is either one
  // SWITCH handle (value = branch; n_branches when done: no case runs) or one IF handle per
  // branch (device array; h_j = (j == branch)); the WHILE handle = !done.
  const cudaGraphConditionalHandle* if_handles;  // [n_branches] or nullptr
  cudaGraphConditionalHandle switch_handle;
  cudaGraphConditionalHandle while_handle;
  int has_switch, has_while;
  long long mask_id;
  int B, L, P, Lb, n_blocks, steps, max_steps, max_iters, phases, per_block, n_branches;
};

struct ProgressArgs {
  const long long* x;  // [B, L]
  int* ctl;            // [CTL_WORDS]; CTL_SEQ is the progress sequence counter
  long long* out;      // mapped host memory, progress_words(B, G) int64 words
  long long mask_id;
  int B, L, P, Lb;
};

// The control's decisions, shared by the kernel (thread 0) and the host version that the CPU
// tests compare with the torch mirror: the same code decides on both sides.
struct CtlDecision {
  int block, step, adv, done;
};

__host__ __device__ inline CtlDecision ctl_begin(const ControlArgs& a) {
  return {a.ctl[CTL_BLOCK], a.ctl[CTL_STEP] + 1, 0, a.ctl[CTL_RUNNING] == 0};
}

// Row b takes part: active and not cancelled (a cancelled row is treated like a stopped one).
// Read once per update into rows[B] (the host may set cancel while the kernel runs).
__host__ __device__ inline bool ctl_row_live(const ControlArgs& a, int b) {
  return a.active[b] && !(a.cancel != nullptr && a.cancel[b]);
}

// rows: ctl_row_live per row; masks: the rows' MASK counts in d.block. The block is complete
// (no live row has a MASK left in it) or out of steps: advance, once.
__host__ __device__ inline void ctl_advance(const ControlArgs& a, const bool* rows,
                                            const int* masks, CtlDecision& d) {
  bool live = false;
  for (int b = 0; b < a.B; ++b) live |= rows[b] && masks[b] > 0;
  d.adv = !(live && d.step < a.max_steps);
  if (d.adv) {
    d.block += 1;
    d.step = 0;
  }
}

__host__ __device__ inline void ctl_finish(const ControlArgs& a, const bool* rows,
                                           CtlDecision& d) {
  bool any_live = false;
  for (int b = 0; b < a.B; ++b) any_live |= rows[b];
  d.done = d.block >= a.n_blocks || !any_live;
  if (!d.done && a.ctl[CTL_ITERS] >= a.max_iters) {
    a.ctl[CTL_ERROR] = 1;
    d.done = 1;
  }
}

// Fixed schedule: row b's k for step i of the block; m0 = masks at the block's first step.
__host__ __device__ inline void ctl_set_k(const ControlArgs& a, const CtlDecision& d,
                                          const int* masks, int b) {
  if (d.step == 0) a.m0[b] = masks[b];
  const long long m = a.m0[b];
  a.k[b] = m / a.steps + (m % a.steps > d.step ? 1 : 0);
}

// Write the control words; returns the branch (-1 when done).
__host__ __device__ inline int ctl_write(const ControlArgs& a, const CtlDecision& d) {
  const int phase = (a.phases == 2 && d.step > 0) ? 1 : 0;
  const int branch = d.done ? -1 : (a.per_block ? d.block * a.phases : 0) + phase;
  int* ctl = a.ctl;
  if (!d.done) {
    ctl[CTL_BLOCK] = d.block;
    ctl[CTL_STEP] = d.step;
    ctl[CTL_ITERS] += 1;
  }
  ctl[CTL_REFRESH] = !d.done && d.step == 0;
  ctl[CTL_RUNNING] = !d.done;
  ctl[CTL_BRANCH] = branch;
  return branch;
}

// The kernel's arguments for `s` with no conditional handles (a direct launch); the runner
// fills the handle fields.
ControlArgs make_control_args(const ControlSpec& s);
ProgressArgs make_progress_args(const ProgressSpec& s);
void* control_kernel_ptr();
void* progress_kernel_ptr();

}  // namespace fastdiff
