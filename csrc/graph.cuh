// CUDA-version shims for the graph APIs (runner.cu, probe.cu). csrc compiles against CUDA 12.4+
// runtime headers (CUDART_VERSION 12040..12090) and CUDA 13:
// - cudaGraphAddNode: 12.3..12.9 take (node, graph, deps, n, params); 13.0 adds edge data
//   (node, graph, deps, edges, n, params) (12.x's cudaGraphAddNode_v2). We add no edge data.
// - cudaGraphCondTypeSwitch (and IF with an else body): 12.8+ headers; the driver must have it
//   too (switch_support() asks it at run time). Without it the runner uses sibling IF nodes.
#pragma once
#include <cuda_runtime.h>

#include <string>

#if !defined(CUDART_VERSION) || CUDART_VERSION < 12040
#error "fastdiff._C needs CUDA >= 12.4 runtime headers (conditional graph nodes)"
#endif

// -DFD_HAS_SWITCH=0 builds the IF-only code of 12.4-12.7 headers with newer ones (CI does).
#ifndef FD_HAS_SWITCH
#if CUDART_VERSION >= 12080
#define FD_HAS_SWITCH 1
#else
#define FD_HAS_SWITCH 0
#endif
#endif

namespace fastdiff {

inline cudaError_t graph_add_node(cudaGraphNode_t* node, cudaGraph_t graph,
                                  const cudaGraphNode_t* deps, size_t n_deps,
                                  cudaGraphNodeParams* params) {
#if CUDART_VERSION >= 13000
  return cudaGraphAddNode(node, graph, deps, nullptr, n_deps, params);
#else
  return cudaGraphAddNode(node, graph, deps, n_deps, params);
#endif
}

// A conditional node of `type` with `size` bodies in `graph` after deps; bodies -> body[0..size).
inline cudaError_t graph_add_conditional(cudaGraphNode_t* node, cudaGraph_t graph,
                                         const cudaGraphNode_t* deps, size_t n_deps,
                                         cudaGraphConditionalHandle handle,
                                         cudaGraphConditionalNodeType type, unsigned size,
                                         cudaGraph_t** bodies) {
  cudaGraphNodeParams p{};
  p.type = cudaGraphNodeTypeConditional;
  p.conditional.handle = handle;
  p.conditional.type = type;
  p.conditional.size = size;
  const cudaError_t e = graph_add_node(node, graph, deps, n_deps, &p);
  if (bodies) *bodies = e == cudaSuccess ? p.conditional.phGraph_out : nullptr;
  return e;
}

// "ok" when conditional nodes of `type` with `size` bodies can be created and instantiated
// here (headers and driver), else the reason. Never throws.
std::string try_conditional(cudaGraphConditionalNodeType type, unsigned size);
// The same for a SWITCH node; "not compiled in (...)" below 12.8 headers.
std::string switch_support();

}  // namespace fastdiff
