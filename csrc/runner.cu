// The loop runner: one CUDA graph per shape bucket whose WHILE node runs a whole generation:
//   WHILE(cond) { control kernel -> SWITCH(branch){case j: child graph j} -> progress kernel }
// or, where SWITCH nodes are missing (headers < 12.8 or an older driver), n sibling IF nodes:
//   WHILE(cond) { control kernel -> IF(h_0){child 0} | ... | IF(h_n-1){child n-1}
//                 -> progress kernel (after every IF) }
// The control kernel sets the switch value to the branch (n when done: no case runs), or
// h_j = (j == branch), and cond = !done (cudaGraphSetConditional), so each iteration runs exactly
// one captured step graph (refresh or cached, per block when the step's shapes depend on the
// block). Conditional bodies hold only kernel, memset, memcpy, child-graph and conditional nodes
// (no events, no host nodes); progress goes to mapped memory.
#include <vector>

#include "check.cuh"
#include "control.cuh"
#include "graph.cuh"

namespace fastdiff {
namespace {

void add_kernel(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* deps,
                size_t n_deps, void* func, void* arg) {
  cudaKernelNodeParams kp{};
  kp.func = func;
  kp.gridDim = dim3(1);
  kp.blockDim = dim3(kThreads);
  kp.sharedMemBytes = 0;
  void* args[] = {arg};
  kp.kernelParams = args;
  FD_CHECK(cudaGraphAddKernelNode(node, graph, deps, n_deps, &kp));
}

void add_child(cudaGraph_t body, uint64_t step_graph) {
  cudaGraphNode_t child;
  FD_CHECK(cudaGraphAddChildGraphNode(&child, body, nullptr, 0,
                                      reinterpret_cast<cudaGraph_t>(step_graph)));
}

}  // namespace

LoopGraph::LoopGraph(const std::vector<uint64_t>& branches, const ControlSpec& control,
                     const ProgressSpec* progress, int use_switch) {
  try {
    build(branches, control, progress, use_switch);
  } catch (...) {
    release();
    throw;
  }
}

void LoopGraph::build(const std::vector<uint64_t>& branches, const ControlSpec& control,
                      const ProgressSpec* progress, int use_switch) {
  n_branches_ = branches.size();
  const size_t want = (size_t)(control.per_block ? control.n_blocks : 1) * control.phases;
  if (n_branches_ == 0 || n_branches_ != want)
    throw std::invalid_argument("LoopGraph: got " + std::to_string(n_branches_) +
                                " step graphs, the control spec needs " + std::to_string(want));
  for (uint64_t g : branches)
    if (g == 0) throw std::invalid_argument("LoopGraph: a step graph handle is null");
  ControlArgs ca = make_control_args(control);  // validate the specs before any CUDA call
  ProgressArgs pa{};
  if (progress != nullptr) pa = make_progress_args(*progress);
  if (use_switch != 0) {
    const std::string why = switch_support();
    if (use_switch == 1 && why != "ok")
      throw CudaError("LoopGraph: use_switch=True but SWITCH conditional nodes are not "
                      "available here: " + why);
    switch_ = why == "ok";
  }
  cudaGraph_t graph = nullptr;
  FD_CHECK(cudaGraphCreate(&graph, 0));
  graph_ = graph;
  cudaGraphConditionalHandle while_h;
  FD_CHECK(cudaGraphConditionalHandleCreate(&while_h, graph, 1, cudaGraphCondAssignDefault));
  cudaGraphNode_t while_node, control_node;
  cudaGraph_t* bodies = nullptr;
  FD_CHECK(graph_add_conditional(&while_node, graph, nullptr, 0, while_h,
                                 cudaGraphCondTypeWhile, 1, &bodies));
  cudaGraph_t body = bodies[0];
  ca.n_branches = (int)n_branches_;
  ca.while_handle = while_h;
  ca.has_while = 1;
  std::vector<cudaGraphNode_t> picks;  // the nodes the progress kernel waits for
  if (switch_) {
#if FD_HAS_SWITCH
    cudaGraphConditionalHandle pick_h;
    FD_CHECK(cudaGraphConditionalHandleCreate(&pick_h, graph, (unsigned)n_branches_,
                                              cudaGraphCondAssignDefault));
    ca.switch_handle = pick_h;
    ca.has_switch = 1;
    add_kernel(&control_node, body, nullptr, 0, control_kernel_ptr(), &ca);
    cudaGraphNode_t sw;
    FD_CHECK(graph_add_conditional(&sw, body, &control_node, 1, pick_h, cudaGraphCondTypeSwitch,
                                   (unsigned)n_branches_, &bodies));
    for (size_t j = 0; j < n_branches_; ++j) add_child(bodies[j], branches[j]);
    picks.push_back(sw);
#endif
  } else {
    std::vector<cudaGraphConditionalHandle> if_h(n_branches_);
    for (auto& h : if_h)
      FD_CHECK(cudaGraphConditionalHandleCreate(&h, graph, 0, cudaGraphCondAssignDefault));
    FD_CHECK(cudaMalloc(&handles_, n_branches_ * sizeof(cudaGraphConditionalHandle)));
    FD_CHECK(cudaMemcpy(handles_, if_h.data(), n_branches_ * sizeof(cudaGraphConditionalHandle),
                        cudaMemcpyHostToDevice));
    ca.if_handles = static_cast<const cudaGraphConditionalHandle*>(handles_);
    add_kernel(&control_node, body, nullptr, 0, control_kernel_ptr(), &ca);
    for (size_t j = 0; j < n_branches_; ++j) {  // siblings: each after the control kernel only
      cudaGraphNode_t if_node;
      FD_CHECK(graph_add_conditional(&if_node, body, &control_node, 1, if_h[j],
                                     cudaGraphCondTypeIf, 1, &bodies));
      add_child(bodies[0], branches[j]);
      picks.push_back(if_node);
    }
  }
  if (progress != nullptr) {
    cudaGraphNode_t pnode;
    add_kernel(&pnode, body, picks.data(), picks.size(), progress_kernel_ptr(), &pa);
  }
  cudaGraphExec_t exec = nullptr;
  FD_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  exec_ = exec;
}

LoopGraph::~LoopGraph() { release(); }

void LoopGraph::release() {  // best effort: runs in the destructor, never throws
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  if (handles_) cudaFree(handles_);
  exec_ = graph_ = handles_ = nullptr;
}

void LoopGraph::launch(uint64_t stream) {
  FD_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_),
                           reinterpret_cast<cudaStream_t>(stream)));
}

}  // namespace fastdiff
