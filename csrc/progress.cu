// Progress for streaming: after each step a kernel copies the row counters and tokens into mapped
// pinned host memory that a host thread polls (no events or host nodes inside the loop).
//
// Layout, int64 words: [0] seq (odd while writing, even when stable: a seqlock), [1] block of
// the last step (n_blocks when done), [2] running, [3] steps issued, [4, 4 + B) committed
// (non-MASK) tokens per row in the generation, then the generation tokens [B, G]: the stepped
// block while running, every column once done.
#include <cstring>

#include "check.cuh"
#include "control.cuh"

namespace fastdiff {

constexpr int kHeader = 4;

int64_t progress_words(int batch, int gen_length) {
  return kHeader + batch + (int64_t)batch * gen_length;
}

__global__ void __launch_bounds__(kThreads) progress_kernel(ProgressArgs a) {
  __shared__ int committed[kMaxBatch];
  __shared__ long long s_seq;
  volatile long long* out = a.out;
  const int G = a.L - a.P;
  if (threadIdx.x == 0) {
    s_seq = ++a.ctl[CTL_SEQ];
    out[0] = 2 * s_seq - 1;
    __threadfence_system();
  }
  for (int b = threadIdx.x; b < a.B; b += blockDim.x) committed[b] = 0;
  __syncthreads();
  const bool running = a.ctl[CTL_RUNNING] != 0;
  const int block = a.ctl[CTL_BLOCK];
  const int lo = running ? block * a.Lb : 0, hi = running ? lo + a.Lb : G;  // generation columns
  for (int idx = threadIdx.x; idx < a.B * G; idx += blockDim.x) {
    const int b = idx / G, j = idx % G;
    const long long t = a.x[(long long)b * a.L + a.P + j];
    if (t != a.mask_id) atomicAdd(&committed[b], 1);
    if (j >= lo && j < hi) out[kHeader + a.B + idx] = t;
  }
  __syncthreads();
  for (int b = threadIdx.x; b < a.B; b += blockDim.x) out[kHeader + b] = committed[b];
  __threadfence_system();
  __syncthreads();
  if (threadIdx.x == 0) {
    out[1] = running ? block : (G / a.Lb);
    out[2] = running;
    out[3] = a.ctl[CTL_ITERS];
    __threadfence_system();
    out[0] = 2 * s_seq;
  }
}

void* progress_kernel_ptr() { return reinterpret_cast<void*>(&progress_kernel); }

ProgressArgs make_progress_args(const ProgressSpec& s) {
  if (s.batch < 1 || s.batch > kMaxBatch)
    throw std::invalid_argument("progress: batch must be in [1, " + std::to_string(kMaxBatch) +
                                "], got " + std::to_string(s.batch));
  if (!s.x || !s.ctl || !s.out) throw std::invalid_argument("progress: x, ctl, out needed");
  if (s.block_length < 1 || s.length <= s.prompt_len)
    throw std::invalid_argument("progress: inconsistent sizes");
  ProgressArgs a{};
  a.x = reinterpret_cast<const long long*>(s.x);
  a.ctl = reinterpret_cast<int*>(s.ctl);
  a.out = reinterpret_cast<long long*>(s.out);
  a.mask_id = s.mask_id;
  a.B = s.batch; a.L = s.length; a.P = s.prompt_len; a.Lb = s.block_length;
  return a;
}

void progress_write(const ProgressSpec& spec, uint64_t stream) {
  ProgressArgs a = make_progress_args(spec);
  progress_kernel<<<1, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a);
  FD_CHECK(cudaGetLastError());
}

std::pair<uint64_t, uint64_t> host_alloc_mapped(int64_t nbytes) {
  if (nbytes <= 0) throw std::invalid_argument("host_alloc_mapped: nbytes must be > 0");
  void* host = nullptr;
  void* dev = nullptr;
  FD_CHECK(cudaHostAlloc(&host, (size_t)nbytes, cudaHostAllocMapped | cudaHostAllocPortable));
  cudaError_t err = cudaHostGetDevicePointer(&dev, host, 0);
  if (err != cudaSuccess) {
    cudaFreeHost(host);
    throw_cuda(err, "cudaHostGetDevicePointer(&dev, host, 0)", __FILE__, __LINE__);
  }
  std::memset(host, 0, (size_t)nbytes);
  return {reinterpret_cast<uint64_t>(host), reinterpret_cast<uint64_t>(dev)};
}

void host_free(uint64_t host_ptr) { FD_CHECK(cudaFreeHost(reinterpret_cast<void*>(host_ptr))); }

}  // namespace fastdiff
