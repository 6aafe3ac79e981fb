// Host API of fastdiff._C: plain C++ (no CUDA types), so bindings.cpp needs no CUDA headers.
// Pointers are device addresses as integers (tensor.data_ptr()); streams and graphs are the raw
// cudaStream_t / cudaGraph_t values as integers (torch: stream.cuda_stream, raw_cuda_graph()).
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastdiff {

// A failed CUDA call: the message names the call, the error and the source line.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Control words, int32 ctl[CTL_WORDS] in device memory (mirrored by fastdiff/decoding/control.py).
enum CtlWord : int {
  CTL_BLOCK = 0,    // block index of the step that is due (the last one stepped once done)
  CTL_STEP = 1,     // step index i within that block (-1 before the first update)
  CTL_REFRESH = 2,  // 1: the due step is the block's refresh forward (i == 0)
  CTL_RUNNING = 3,  // 1: a step is due; 0: the generation is done
  CTL_BRANCH = 4,   // index of the step graph to run (-1 when done)
  CTL_ITERS = 5,    // steps issued so far
  CTL_ERROR = 6,    // 1: more than max_iters steps (a bug guard), the loop was stopped
  CTL_SEQ = 7,      // progress sequence counter (the progress kernel's seqlock)
  CTL_WORDS = 8,
};

// Everything the control kernel reads; pointers as device addresses.
struct ControlSpec {
  uint64_t x = 0;       // int64 [B, L] canvas
  uint64_t active = 0;  // bool [B]
  uint64_t ctl = 0;     // int32 [CTL_WORDS]
  uint64_t k = 0;       // int64 [B]: per-row k of the fixed schedule for the due step (or 0)
  uint64_t m0 = 0;      // int64 [B]: masks in the block at its start (scratch for k; or 0)
  uint64_t cancel = 0;  // bool [B] set by the host while a generation runs (or 0): a cancelled
                        // row counts as not active, like an early-stopped one
  int64_t mask_id = 0;
  int batch = 0, length = 0, prompt_len = 0, block_length = 0, n_blocks = 0;
  int steps_per_block = 0;  // fixed schedule's steps (0: threshold / factor, no k)
  int max_steps = 0;        // per block: steps_per_block or block_length
  int max_iters = 0;        // bug guard: n_blocks * max_steps
  int phases = 1;           // 2: separate refresh / cached step graphs; 1: one step graph
  int per_block = 0;        // 1: one graph set per block (branch = block * phases + phase)
};

// Progress for streaming: written by a kernel into mapped pinned host memory (see progress.cu).
struct ProgressSpec {
  uint64_t x = 0, ctl = 0;  // device pointers
  uint64_t out = 0;         // device address of the mapped host buffer (int64 words)
  int64_t mask_id = 0;
  int batch = 0, length = 0, prompt_len = 0, block_length = 0;
};

int64_t progress_words(int batch, int gen_length);

// One control update (the host-replay fallback and tests): launches the control kernel, no
// conditional handles.
void control_update(const ControlSpec& spec, uint64_t stream);
// The same decisions computed on the host over host memory (CPU tests of the kernel's logic).
void control_update_host(const ControlSpec& spec);
void progress_write(const ProgressSpec& spec, uint64_t stream);

// Mapped pinned host memory: returns {host address, device address}.
std::pair<uint64_t, uint64_t> host_alloc_mapped(int64_t nbytes);
void host_free(uint64_t host_ptr);

// The WHILE-loop graph: WHILE { control kernel; pick step graph `branch`; progress kernel
// (optional) }. The pick is one SWITCH node (case j: child graph j) where the headers (12.8+)
// and the driver have it, else n sibling IF nodes (IF(branch == j): child graph j), each after
// the control kernel, the progress kernel after all of them. Instantiated once; launched per
// generation.
class LoopGraph {
 public:
  // use_switch: 1 switch (an error where unsupported), 0 IF nodes, -1 switch where supported.
  LoopGraph(const std::vector<uint64_t>& branches, const ControlSpec& control,
            const ProgressSpec* progress, int use_switch = -1);
  ~LoopGraph();
  LoopGraph(const LoopGraph&) = delete;
  LoopGraph& operator=(const LoopGraph&) = delete;
  void launch(uint64_t stream);
  int num_branches() const { return static_cast<int>(n_branches_); }
  std::string kind() const { return switch_ ? "switch" : "if"; }  // what was built

 private:
  void build(const std::vector<uint64_t>& branches, const ControlSpec& control,
             const ProgressSpec* progress, int use_switch);
  void release();
  void* graph_ = nullptr;    // cudaGraph_t
  void* exec_ = nullptr;     // cudaGraphExec_t
  void* handles_ = nullptr;  // device array of IF handles (IF mode)
  size_t n_branches_ = 0;
  bool switch_ = false;
};

// Versions and which conditional-node APIs work here; never throws (errors become strings).
std::map<std::string, std::string> conditional_support();

// Builds and runs WHILE { kernel; two sibling IF nodes -> child graphs } (use_switch: one
// SWITCH node with two cases instead) on tiny counters, launches it twice and checks the counts:
// the end-to-end check of the mechanism, without torch. Throws CudaError on failure (e.g. a
// driver older than the runtime this was built with).
// Returns {"iterations": 5, "if0_runs": 2, "if1_runs": 3} (switch: "case0_runs", "case1_runs").
std::map<std::string, int64_t> self_test(uint64_t stream, bool use_switch = false);

// The type of every node of a cudaGraph_t (top level, in cudaGraphGetNodes order): "kernel",
// "memcpy", "memset", "host", "graph", "empty", "wait_event", "event_record",
// "ext_semaphore_signal", "ext_semaphore_wait", "mem_alloc", "mem_free", "batch_mem_op",
// "conditional", else "unknown(<n>)".
std::vector<std::string> graph_node_types(uint64_t graph);

}  // namespace fastdiff
