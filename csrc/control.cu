// The control kernel: the loop's decisions (advance the block, refresh or cached step, stop),
// made on the device before each step. One thread block; mirrored line by line in
// fastdiff/decoding/control.py (Control.update), which the CPU tests check against the eager loop.
#include <memory>
#include <vector>

#include "check.cuh"
#include "control.cuh"

namespace fastdiff {

// masks[b] = MASK count of row b in block `block` (all rows, frozen ones too).
__device__ void count_block_masks(const ControlArgs& a, int block, int* masks) {
  for (int b = threadIdx.x; b < a.B; b += blockDim.x) masks[b] = 0;
  __syncthreads();
  if (block < a.n_blocks) {
    const long long start = a.P + (long long)block * a.Lb;
    for (int idx = threadIdx.x; idx < a.B * a.Lb; idx += blockDim.x) {
      const int b = idx / a.Lb, j = idx % a.Lb;
      if (a.x[(long long)b * a.L + start + j] == a.mask_id) atomicAdd(&masks[b], 1);
    }
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) control_kernel(ControlArgs a) {
  __shared__ int masks[kMaxBatch];
  __shared__ bool rows[kMaxBatch];
  __shared__ CtlDecision d;
  if (threadIdx.x == 0) d = ctl_begin(a);
  __syncthreads();
  if (!d.done) {
    for (int b = threadIdx.x; b < a.B; b += blockDim.x) rows[b] = ctl_row_live(a, b);
    count_block_masks(a, d.block, masks);  // (its barriers publish rows too)
    if (threadIdx.x == 0) ctl_advance(a, rows, masks, d);
    __syncthreads();
    if (d.adv) count_block_masks(a, d.block, masks);
    if (threadIdx.x == 0) ctl_finish(a, rows, d);
    __syncthreads();
    if (!d.done && a.k != nullptr && a.steps > 0)
      for (int b = threadIdx.x; b < a.B; b += blockDim.x) ctl_set_k(a, d, masks, b);
  }
  if (threadIdx.x != 0) return;
  const int branch = ctl_write(a, d);
  if (a.has_switch)  // a value >= the number of cases runs none
    cudaGraphSetConditional(a.switch_handle, d.done ? a.n_branches : branch);
  else if (a.if_handles != nullptr)
    for (int j = 0; j < a.n_branches; ++j) cudaGraphSetConditional(a.if_handles[j], j == branch);
  if (a.has_while) cudaGraphSetConditional(a.while_handle, !d.done);
}

void* control_kernel_ptr() { return reinterpret_cast<void*>(&control_kernel); }

ControlArgs make_control_args(const ControlSpec& s) {
  if (s.batch < 1 || s.batch > kMaxBatch)
    throw std::invalid_argument("control: batch must be in [1, " + std::to_string(kMaxBatch) +
                                "], got " + std::to_string(s.batch));
  if (!s.x || !s.active || !s.ctl) throw std::invalid_argument("control: x, active, ctl needed");
  if (s.steps_per_block > 0 && (!s.k || !s.m0))
    throw std::invalid_argument("control: a fixed schedule needs the k and m0 buffers");
  if (s.block_length < 1 || s.n_blocks < 1 || s.max_steps < 1 ||
      s.prompt_len + (int64_t)s.n_blocks * s.block_length > s.length)
    throw std::invalid_argument("control: inconsistent sizes (block_length, n_blocks, length)");
  if (s.phases != 1 && s.phases != 2) throw std::invalid_argument("control: phases is 1 or 2");
  ControlArgs a{};
  a.x = reinterpret_cast<const long long*>(s.x);
  a.active = reinterpret_cast<const bool*>(s.active);
  a.ctl = reinterpret_cast<int*>(s.ctl);
  a.k = reinterpret_cast<long long*>(s.k);
  a.m0 = reinterpret_cast<long long*>(s.m0);
  a.cancel = reinterpret_cast<const bool*>(s.cancel);
  a.mask_id = s.mask_id;
  a.B = s.batch; a.L = s.length; a.P = s.prompt_len; a.Lb = s.block_length;
  a.n_blocks = s.n_blocks; a.steps = s.steps_per_block; a.max_steps = s.max_steps;
  a.max_iters = s.max_iters > 0 ? s.max_iters : s.n_blocks * s.max_steps;
  a.phases = s.phases; a.per_block = s.per_block;
  return a;
}

void control_update_host(const ControlSpec& spec) {
  const ControlArgs a = make_control_args(spec);
  std::vector<int> masks(a.B);
  std::unique_ptr<bool[]> rows(new bool[a.B]);
  auto count = [&](int block) {
    for (int b = 0; b < a.B; ++b) {
      masks[b] = 0;
      if (block >= a.n_blocks) continue;
      const long long* row = a.x + (long long)b * a.L + a.P + (long long)block * a.Lb;
      for (int j = 0; j < a.Lb; ++j) masks[b] += row[j] == a.mask_id;
    }
  };
  CtlDecision d = ctl_begin(a);
  if (!d.done) {
    for (int b = 0; b < a.B; ++b) rows[b] = ctl_row_live(a, b);
    count(d.block);
    ctl_advance(a, rows.get(), masks.data(), d);
    if (d.adv) count(d.block);
    ctl_finish(a, rows.get(), d);
    if (!d.done && a.k != nullptr && a.steps > 0)
      for (int b = 0; b < a.B; ++b) ctl_set_k(a, d, masks.data(), b);
  }
  ctl_write(a, d);
}

void control_update(const ControlSpec& spec, uint64_t stream) {
  ControlArgs a = make_control_args(spec);
  control_kernel<<<1, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a);
  FD_CHECK(cudaGetLastError());
}

}  // namespace fastdiff
