// The loop runner: one CUDA graph per shape bucket whose WHILE node runs a whole generation:
//   WHILE(cond) { control kernel -> IF(h_0){child graph 0} -> ... -> IF(h_n-1){child n-1}
//                 -> progress kernel }
// The control kernel sets h_j = (j == branch) and cond = !done (cudaGraphSetConditional), so
// each iteration runs exactly one captured step graph (refresh or cached, per block when the
// step's shapes depend on the block). Conditional bodies hold only kernel, memset, memcpy,
// child-graph and conditional nodes (no events, no host nodes); progress goes to mapped memory.
#include "check.cuh"
#include "control.cuh"

namespace fastdiff {
namespace {

cudaGraph_t add_conditional(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* dep,
                            cudaGraphConditionalHandle handle, cudaGraphConditionalNodeType type) {
  cudaGraphNodeParams p{};
  p.type = cudaGraphNodeTypeConditional;
  p.conditional.handle = handle;
  p.conditional.type = type;
  p.conditional.size = 1;
  FD_CHECK(cudaGraphAddNode(node, graph, dep, nullptr, dep ? 1 : 0, &p));
  return p.conditional.phGraph_out[0];
}

void add_kernel(cudaGraphNode_t* node, cudaGraph_t graph, const cudaGraphNode_t* dep, void* func,
                void* arg) {
  cudaKernelNodeParams kp{};
  kp.func = func;
  kp.gridDim = dim3(1);
  kp.blockDim = dim3(kThreads);
  kp.sharedMemBytes = 0;
  void* args[] = {arg};
  kp.kernelParams = args;
  FD_CHECK(cudaGraphAddKernelNode(node, graph, dep, dep ? 1 : 0, &kp));
}

}  // namespace

LoopGraph::LoopGraph(const std::vector<uint64_t>& branches, const ControlSpec& control,
                     const ProgressSpec* progress) {
  try {
    build(branches, control, progress);
  } catch (...) {
    release();
    throw;
  }
}

void LoopGraph::build(const std::vector<uint64_t>& branches, const ControlSpec& control,
                      const ProgressSpec* progress) {
  n_branches_ = branches.size();
  const size_t want = (size_t)(control.per_block ? control.n_blocks : 1) * control.phases;
  if (n_branches_ == 0 || n_branches_ != want)
    throw std::invalid_argument("LoopGraph: got " + std::to_string(n_branches_) +
                                " step graphs, the control spec needs " + std::to_string(want));
  for (uint64_t g : branches)
    if (g == 0) throw std::invalid_argument("LoopGraph: a step graph handle is null");
  cudaGraph_t graph = nullptr;
  FD_CHECK(cudaGraphCreate(&graph, 0));
  graph_ = graph;
  cudaGraphConditionalHandle while_h;
  FD_CHECK(cudaGraphConditionalHandleCreate(&while_h, graph, 1, cudaGraphCondAssignDefault));
  std::vector<cudaGraphConditionalHandle> if_h(n_branches_);
  for (auto& h : if_h) FD_CHECK(cudaGraphConditionalHandleCreate(&h, graph, 0,
                                                                  cudaGraphCondAssignDefault));
  FD_CHECK(cudaMalloc(&handles_, n_branches_ * sizeof(cudaGraphConditionalHandle)));
  FD_CHECK(cudaMemcpy(handles_, if_h.data(), n_branches_ * sizeof(cudaGraphConditionalHandle),
                      cudaMemcpyHostToDevice));

  cudaGraphNode_t while_node, prev;
  cudaGraph_t body = add_conditional(&while_node, graph, nullptr, while_h, cudaGraphCondTypeWhile);
  ControlArgs ca = make_control_args(
      control, static_cast<const cudaGraphConditionalHandle*>(handles_), (int)n_branches_,
      while_h, 1);
  add_kernel(&prev, body, nullptr, control_kernel_ptr(), &ca);
  for (size_t j = 0; j < n_branches_; ++j) {
    cudaGraphNode_t if_node, child;
    cudaGraph_t if_body = add_conditional(&if_node, body, &prev, if_h[j], cudaGraphCondTypeIf);
    FD_CHECK(cudaGraphAddChildGraphNode(&child, if_body, nullptr, 0,
                                        reinterpret_cast<cudaGraph_t>(branches[j])));
    prev = if_node;
  }
  if (progress != nullptr) {
    ProgressArgs pa = make_progress_args(*progress);
    cudaGraphNode_t pnode;
    add_kernel(&pnode, body, &prev, progress_kernel_ptr(), &pa);
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
