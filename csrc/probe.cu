// What the runtime and driver here support: versions, and whether WHILE / IF / SWITCH
// conditional nodes can be created and instantiated; an end-to-end self test of the
// WHILE { kernel; pick one child graph } shape the loop runner builds (sibling IF nodes or one
// SWITCH node); and the node types of a graph, for logs.
#include <vector>

#include "check.cuh"
#include "graph.cuh"

namespace fastdiff {
namespace {

std::string err_text(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

// One self-test iteration: count it, pick child it % 2 (switch value or two IF handles), and
// go on while it < n_iters.
__global__ void st_body(int* counters, cudaGraphConditionalHandle while_h,
                        cudaGraphConditionalHandle pick0, cudaGraphConditionalHandle pick1,
                        int use_switch, int n_iters) {
  const int it = ++counters[0];
  if (use_switch) {
    cudaGraphSetConditional(pick0, it % 2 == 0 ? 0u : 1u);
  } else {
    cudaGraphSetConditional(pick0, it % 2 == 0);
    cudaGraphSetConditional(pick1, it % 2 == 1);
  }
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

// Builds WHILE { st_body -> (SWITCH{child0, child1} | IF{child0} and IF{child1} as siblings) }
// into g.
void build_self_test(cudaGraph_t g, int* counters, cudaGraph_t child0, cudaGraph_t child1,
                     bool use_switch, int n_iters) {
  cudaGraphConditionalHandle wh, h0 = 0, h1 = 0;
  FD_CHECK(cudaGraphConditionalHandleCreate(&wh, g, 1, cudaGraphCondAssignDefault));
  FD_CHECK(cudaGraphConditionalHandleCreate(&h0, g, 0, cudaGraphCondAssignDefault));
  if (!use_switch)
    FD_CHECK(cudaGraphConditionalHandleCreate(&h1, g, 0, cudaGraphCondAssignDefault));
  cudaGraphNode_t wnode, knode, node;
  cudaGraph_t* bodies = nullptr;
  FD_CHECK(graph_add_conditional(&wnode, g, nullptr, 0, wh, cudaGraphCondTypeWhile, 1, &bodies));
  cudaGraph_t body = bodies[0];
  cudaKernelNodeParams kp{};
  kp.func = reinterpret_cast<void*>(&st_body);
  kp.gridDim = dim3(1);
  kp.blockDim = dim3(1);
  int sw = use_switch, n = n_iters;
  void* args[] = {&counters, &wh, &h0, &h1, &sw, &n};
  kp.kernelParams = args;
  FD_CHECK(cudaGraphAddKernelNode(&knode, body, nullptr, 0, &kp));
  cudaGraphNode_t c;
  if (use_switch) {
#if FD_HAS_SWITCH
    FD_CHECK(graph_add_conditional(&node, body, &knode, 1, h0, cudaGraphCondTypeSwitch, 2,
                                   &bodies));
    FD_CHECK(cudaGraphAddChildGraphNode(&c, bodies[0], nullptr, 0, child0));
    FD_CHECK(cudaGraphAddChildGraphNode(&c, bodies[1], nullptr, 0, child1));
#endif
    return;
  }
  FD_CHECK(graph_add_conditional(&node, body, &knode, 1, h0, cudaGraphCondTypeIf, 1, &bodies));
  FD_CHECK(cudaGraphAddChildGraphNode(&c, bodies[0], nullptr, 0, child0));
  FD_CHECK(graph_add_conditional(&node, body, &knode, 1, h1, cudaGraphCondTypeIf, 1, &bodies));
  FD_CHECK(cudaGraphAddChildGraphNode(&c, bodies[0], nullptr, 0, child1));
}

const char* node_type_name(cudaGraphNodeType t) {
  switch (static_cast<int>(t)) {
    case 0x00: return "kernel";
    case 0x01: return "memcpy";
    case 0x02: return "memset";
    case 0x03: return "host";
    case 0x04: return "graph";
    case 0x05: return "empty";
    case 0x06: return "wait_event";
    case 0x07: return "event_record";
    case 0x08: return "ext_semaphore_signal";
    case 0x09: return "ext_semaphore_wait";
    case 0x0a: return "mem_alloc";
    case 0x0b: return "mem_free";
    case 0x0c: return "batch_mem_op";  // driver-only type (CU_GRAPH_NODE_TYPE_BATCH_MEM_OP)
    case 0x0d: return "conditional";
    default: return nullptr;
  }
}

}  // namespace

std::string try_conditional(cudaGraphConditionalNodeType type, unsigned size) {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphCreate(&g, 0);
  cudaGraphConditionalHandle h;
  if (e == cudaSuccess) e = cudaGraphConditionalHandleCreate(&h, g, 0, cudaGraphCondAssignDefault);
  cudaGraphNode_t node;
  if (e == cudaSuccess) e = graph_add_conditional(&node, g, nullptr, 0, h, type, size, nullptr);
  if (e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
  if (exec) cudaGraphExecDestroy(exec);
  if (g) cudaGraphDestroy(g);
  return e == cudaSuccess ? "ok" : err_text(e);
}

std::string switch_support() {
#if FD_HAS_SWITCH
  return try_conditional(cudaGraphCondTypeSwitch, 2);
#else
  return "not compiled in (FD_HAS_SWITCH=0; CUDA runtime headers " +
         std::to_string(CUDART_VERSION) + ", SWITCH nodes need 12080+)";
#endif
}

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
#if FD_HAS_SWITCH
  r["if_else_node"] = try_conditional(cudaGraphCondTypeIf, 2);
#else
  r["if_else_node"] = switch_support();  // the same reason: needs 12.8 headers
#endif
  r["switch_node"] = switch_support();
  return r;
}

std::map<std::string, int64_t> self_test(uint64_t stream, bool use_switch) {
  if (use_switch) {
    const std::string why = switch_support();
    if (why != "ok") throw CudaError("self_test(use_switch=True): SWITCH nodes: " + why);
  }
  const int n_iters = 5;
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  int* counters = nullptr;  // [0] iterations, [1] child-0 runs, [2] child-1 runs
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
    build_self_test(g, counters, child0, child1, use_switch, n_iters);
    FD_CHECK(cudaGraphInstantiate(&exec, g, 0));
    int host[3] = {0, 0, 0};
    for (int launch = 0; launch < 2; ++launch) {  // twice: the handles' defaults are re-applied
      FD_CHECK(cudaMemsetAsync(counters, 0, 3 * sizeof(int), s));
      FD_CHECK(cudaGraphLaunch(exec, s));
      FD_CHECK(cudaMemcpyAsync(host, counters, sizeof(host), cudaMemcpyDeviceToHost, s));
      FD_CHECK(cudaStreamSynchronize(s));
      if (host[0] != n_iters || host[1] != n_iters / 2 || host[2] != n_iters - n_iters / 2)
        throw CudaError("self_test: launch " + std::to_string(launch) + " ran " +
                        std::to_string(host[0]) + " iterations and bodies " +
                        std::to_string(host[1]) + "/" + std::to_string(host[2]) + ", expected " +
                        std::to_string(n_iters) + " and 2/3");
    }
    const std::string what = use_switch ? "case" : "if";
    r["iterations"] = host[0];
    r[what + "0_runs"] = host[1];
    r[what + "1_runs"] = host[2];
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
  return r;
}

std::vector<std::string> graph_node_types(uint64_t graph) {
  if (graph == 0) throw std::invalid_argument("graph_node_types: the graph handle is null");
  cudaGraph_t g = reinterpret_cast<cudaGraph_t>(graph);
  size_t n = 0;
  FD_CHECK(cudaGraphGetNodes(g, nullptr, &n));
  std::vector<cudaGraphNode_t> nodes(n);
  if (n) FD_CHECK(cudaGraphGetNodes(g, nodes.data(), &n));
  std::vector<std::string> names;
  names.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    cudaGraphNodeType t;
    FD_CHECK(cudaGraphNodeGetType(nodes[i], &t));
    const char* name = node_type_name(t);
    names.push_back(name ? name : "unknown(" + std::to_string(static_cast<int>(t)) + ")");
  }
  return names;
}

}  // namespace fastdiff
