// FD_CHECK(call): throw fastdiff::CudaError naming the call, the CUDA error and the source line.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "fastdiff.h"

namespace fastdiff {
[[noreturn]] inline void throw_cuda(cudaError_t err, const char* call, const char* file, int line) {
  throw CudaError(std::string(call) + " failed: " + cudaGetErrorName(err) + " (" +
                  cudaGetErrorString(err) + ") at " + file + ":" + std::to_string(line));
}
}  // namespace fastdiff

#define FD_CHECK(call)                                                        \
  do {                                                                        \
    cudaError_t fd_err_ = (call);                                             \
    if (fd_err_ != cudaSuccess) ::fastdiff::throw_cuda(fd_err_, #call, __FILE__, __LINE__); \
  } while (0)
