// What the runtime and driver here support: versions, and whether WHILE / IF / SWITCH
// conditional nodes can be created and instantiated; plus an end-to-end self test of the
// WHILE { kernel; IF -> child graph } shape the loop runner builds.
#include "check.cuh"

namespace fastdiff {
namespace {

std::string err_text(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// Try to create and instantiate a graph with one conditional node of `type` (empty body).
std::string try_conditional(cudaGraphConditionalNodeType type, unsigned size) {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphCreate(&g, 0);
  cudaGraphConditionalHandle h;
  if (e == cudaSuccess) e = cudaGraphConditionalHandleCreate(&h, g, 0, cudaGraphCondAssignDefault);
  if (e == cudaSuccess) {
    cudaGraphNodeParams p{};
    p.type = cudaGraphNodeTypeConditional;
    p.conditional.handle = h;
    p.conditional.type = type;
    p.conditional.size = size;
    cudaGraphNode_t node;
    e = cudaGraphAddNode(&node, g, nullptr, nullptr, 0, &p);
  }
  if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
  if (exec) cudaGraphExecDestroy(exec);
  if (g) cudaGraphDestroy(g);
  return e == cudaSuccess ? "ok" : err_text(e);
}

__global__ void st_body(int* counters, cudaGraphConditionalHandle while_h,
                        cudaGraphConditionalHandle if0, cudaGraphConditionalHandle if1,
                        int n_iters) {
  const int it = ++counters[0];
  cudaGraphSetConditional(if0, it % 2 == 0);
  cudaGraphSetConditional(if1, it % 2 == 1);
  cudaGraphSetConditional(while_h, it < n_iters);
}

__global__ void st_add(int* counter) { atomicAdd(counter, 1); }

cudaGraph_t counter_graph(int* counter) {
  cudaGraph_t g;
  FD_CHECK(cudaGraphCreate(&g, 0));
  cudaKernelNodeParams kp{};
  kp.func = reinterpret_cast<void*>(&st_add);
  kp.gridDim = dim3(1);
  kp.blockDim = dim3(1);
  void* args[] = {&counter};
  kp.kernelParams = args;
  cudaGraphNode_t n;
  FD_CHECK(cudaGraphAddKernelNode(&n, g, nullptr, 0, &kp));
  return g;
}

}  // namespace

std::map<std::string, std::string> conditional_support() {
  std::map<std::string, std::string> r;
  r["compiled_cudart"] = std::to_string(CUDART_VERSION);
  int v = 0;
  cudaError_t e = cudaRuntimeGetVersion(&v);
  r["runtime_version"] = e == cudaSuccess ? std::to_string(v) : err_text(e);
  e = cudaDriverGetVersion(&v);
  r["driver_version"] = e == cudaSuccess ? std::to_string(v) : err_text(e);
  int n = 0;
  e = cudaGetDeviceCount(&n);
  r["device_count"] = e == cudaSuccess ? std::to_string(n) : err_text(e);
  if (e != cudaSuccess || n == 0) return r;
  int dev = 0;
  cudaGetDevice(&dev);
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess) {
    r["device_name"] = prop.name;
    r["compute_capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
  }
  r["while_node"] = try_conditional(cudaGraphCondTypeWhile, 1);
  r["if_node"] = try_conditional(cudaGraphCondTypeIf, 1);
  r["if_else_node"] = try_conditional(cudaGraphCondTypeIf, 2);
  r["switch_node"] = try_conditional(cudaGraphCondTypeSwitch, 4);
  return r;
}

std::map<std::string, int64_t> self_test(uint64_t stream) {
  const int n_iters = 5;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  int* counters = nullptr;  // [0] iterations, [1] IF-0 bodies run, [2] IF-1 bodies run
  cudaGraph_t g = nullptr, child0 = nullptr, child1 = nullptr;
  cudaGraphExec_t exec = nullptr;
  std::map<std::string, int64_t> r;
  auto cleanup = [&]() {
    if (exec) cudaGraphExecDestroy(exec);
    if (g) cudaGraphDestroy(g);
    if (child0) cudaGraphDestroy(child0);
    if (child1) cudaGraphDestroy(child1);
    if (counters) cudaFree(counters);
  };
  try {
    FD_CHECK(cudaMalloc(&counters, 3 * sizeof(int)));
    child0 = counter_graph(counters + 1);
    child1 = counter_graph(counters + 2);
    FD_CHECK(cudaGraphCreate(&g, 0));
    cudaGraphConditionalHandle wh, h0, h1;
    FD_CHECK(cudaGraphConditionalHandleCreate(&wh, g, 1, cudaGraphCondAssignDefault));
    FD_CHECK(cudaGraphConditionalHandleCreate(&h0, g, 0, cudaGraphCondAssignDefault));
    FD_CHECK(cudaGraphConditionalHandleCreate(&h1, g, 0, cudaGraphCondAssignDefault));
    cudaGraphNodeParams wp{};
    wp.type = cudaGraphNodeTypeConditional;
    wp.conditional = {wh, cudaGraphCondTypeWhile, 1, nullptr};
    cudaGraphNode_t wnode, knode, if0, if1, c0, c1;
    FD_CHECK(cudaGraphAddNode(&wnode, g, nullptr, nullptr, 0, &wp));
    cudaGraph_t body = wp.conditional.phGraph_out[0];
    cudaKernelNodeParams kp{};
    kp.func = reinterpret_cast<void*>(&st_body);
    kp.gridDim = dim3(1);
    kp.blockDim = dim3(1);
    int n = n_iters;
    void* args[] = {&counters, &wh, &h0, &h1, &n};
    kp.kernelParams = args;
    FD_CHECK(cudaGraphAddKernelNode(&knode, body, nullptr, 0, &kp));
    cudaGraphNodeParams ip{};
    ip.type = cudaGraphNodeTypeConditional;
    ip.conditional = {h0, cudaGraphCondTypeIf, 1, nullptr};
    FD_CHECK(cudaGraphAddNode(&if0, body, &knode, nullptr, 1, &ip));
    FD_CHECK(cudaGraphAddChildGraphNode(&c0, ip.conditional.phGraph_out[0], nullptr, 0, child0));
    cudaGraphNodeParams ip1{};
    ip1.type = cudaGraphNodeTypeConditional;
    ip1.conditional = {h1, cudaGraphCondTypeIf, 1, nullptr};
    FD_CHECK(cudaGraphAddNode(&if1, body, &if0, nullptr, 1, &ip1));
    FD_CHECK(cudaGraphAddChildGraphNode(&c1, ip1.conditional.phGraph_out[0], nullptr, 0, child1));
    FD_CHECK(cudaGraphInstantiate(&exec, g, 0));
    int host[3] = {0, 0, 0};
    for (int launch = 0; launch < 2; ++launch) {  // twice: the handles' defaults are re-applied
      FD_CHECK(cudaMemsetAsync(counters, 0, 3 * sizeof(int), s));
      FD_CHECK(cudaGraphLaunch(exec, s));
      FD_CHECK(cudaMemcpyAsync(host, counters, sizeof(host), cudaMemcpyDeviceToHost, s));
      FD_CHECK(cudaStreamSynchronize(s));
      if (host[0] != n_iters || host[1] != n_iters / 2 || host[2] != n_iters - n_iters / 2)
        throw CudaError("self_test: launch " + std::to_string(launch) + " ran " +
                        std::to_string(host[0]) + " iterations and IF bodies " +
                        std::to_string(host[1]) + "/" + std::to_string(host[2]) + ", expected " +
                        std::to_string(n_iters) + " and 2/3");
    }
    r["iterations"] = host[0];
    r["if0_runs"] = host[1];
    r["if1_runs"] = host[2];
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
  return r;
}

}  // namespace fastdiff
