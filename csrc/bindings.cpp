// fastdiff._C: the one pybind11 binding file. Plain C++ (no CUDA headers): pointers, streams and
// graphs cross as integers; CUDA failures raise fastdiff._C.CudaError (a RuntimeError) whose
// message names the failing call; bad arguments raise ValueError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "fastdiff.h"

namespace py = pybind11;
using namespace fastdiff;

namespace {

ControlSpec control_spec(uint64_t x, uint64_t active, uint64_t ctl, uint64_t k, uint64_t m0,
                         int64_t mask_id, int batch, int length, int prompt_len,
                         int block_length, int n_blocks, int steps_per_block, int max_steps,
                         int phases, int per_block, int max_iters, uint64_t cancel) {
  ControlSpec s;
  s.x = x; s.active = active; s.ctl = ctl; s.k = k; s.m0 = m0; s.cancel = cancel;
  s.mask_id = mask_id;
  s.batch = batch; s.length = length; s.prompt_len = prompt_len; s.block_length = block_length;
  s.n_blocks = n_blocks; s.steps_per_block = steps_per_block; s.max_steps = max_steps;
  s.phases = phases; s.per_block = per_block; s.max_iters = max_iters;
  return s;
}

ProgressSpec progress_spec(uint64_t x, uint64_t ctl, uint64_t out, int64_t mask_id, int batch,
                           int length, int prompt_len, int block_length) {
  ProgressSpec s;
  s.x = x; s.ctl = ctl; s.out = out; s.mask_id = mask_id; s.batch = batch; s.length = length;
  s.prompt_len = prompt_len; s.block_length = block_length;
  return s;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdiff CUDA extension: control kernel, WHILE-loop graph runner, progress writer";
  py::register_exception<CudaError>(m, "CudaError", PyExc_RuntimeError);
  py::register_exception<std::invalid_argument>(m, "ArgumentError", PyExc_ValueError);

  m.attr("CTL_WORDS") = static_cast<int>(CTL_WORDS);
  m.attr("CTL_BLOCK") = static_cast<int>(CTL_BLOCK);
  m.attr("CTL_STEP") = static_cast<int>(CTL_STEP);
  m.attr("CTL_REFRESH") = static_cast<int>(CTL_REFRESH);
  m.attr("CTL_RUNNING") = static_cast<int>(CTL_RUNNING);
  m.attr("CTL_BRANCH") = static_cast<int>(CTL_BRANCH);
  m.attr("CTL_ITERS") = static_cast<int>(CTL_ITERS);
  m.attr("CTL_ERROR") = static_cast<int>(CTL_ERROR);

  py::class_<ControlSpec>(m, "ControlSpec")
      .def(py::init(&control_spec), py::arg("x"), py::arg("active"), py::arg("ctl"),
           py::arg("k"), py::arg("m0"), py::arg("mask_id"), py::arg("batch"), py::arg("length"),
           py::arg("prompt_len"), py::arg("block_length"), py::arg("n_blocks"),
           py::arg("steps_per_block"), py::arg("max_steps"), py::arg("phases"),
           py::arg("per_block"), py::arg("max_iters") = 0, py::arg("cancel") = 0,
           "Pointers are data_ptr() integers: x int64 [B, L], active bool [B], ctl int32 "
           "[CTL_WORDS], k / m0 int64 [B] (0 without a fixed schedule), cancel bool [B] (0: "
           "none; a row the host cancels counts as not active).");
  py::class_<ProgressSpec>(m, "ProgressSpec")
      .def(py::init(&progress_spec), py::arg("x"), py::arg("ctl"), py::arg("out"),
           py::arg("mask_id"), py::arg("batch"), py::arg("length"), py::arg("prompt_len"),
           py::arg("block_length"),
           "out: the device address of a mapped host buffer of progress_words(B, G) int64.");

  m.def("control_update", &control_update, py::arg("spec"), py::arg("stream"),
        "Launch one control update on `stream` (host-replay fallback; no conditionals).");
  m.def("control_update_host", &control_update_host, py::arg("spec"),
        "The kernel's decision code run on the host over CPU tensors (tests).");
  m.def("progress_write", &progress_write, py::arg("spec"), py::arg("stream"));
  m.def("progress_words", &progress_words, py::arg("batch"), py::arg("gen_length"));
  m.def("host_alloc_mapped", &host_alloc_mapped, py::arg("nbytes"),
        "Mapped pinned host memory -> (host address, device address).");
  m.def("host_free", &host_free, py::arg("host_ptr"));
  m.def("conditional_support", &conditional_support,
        "Versions and which conditional-node types can be instantiated here (never raises).");
  m.def("self_test", &self_test, py::arg("stream"), py::arg("use_switch") = false,
        py::call_guard<py::gil_scoped_release>(),
        "Run WHILE { kernel; two sibling IF nodes (use_switch: one SWITCH node) -> child graphs "
        "} on counters, launched twice -> {'iterations': 5, 'if0_runs': 2, 'if1_runs': 3} "
        "(switch: case0_runs / case1_runs); raises CudaError when it cannot run or miscounts.");
  m.def("graph_node_types", &graph_node_types, py::arg("graph"),
        "Node types of a cudaGraph_t integer (top level, cudaGraphGetNodes order): 'kernel', "
        "'memcpy', 'memset', 'host', 'graph', 'empty', 'wait_event', 'event_record', "
        "'mem_alloc', 'mem_free', 'conditional', ...");

  py::class_<LoopGraph>(m, "LoopGraph")
      .def(py::init([](const std::vector<uint64_t>& branches, const ControlSpec& control,
                       const ProgressSpec* progress, std::optional<bool> use_switch) {
             return new LoopGraph(branches, control, progress,
                                  use_switch.has_value() ? int(*use_switch) : -1);
           }),
           py::arg("branches"), py::arg("control"), py::arg("progress") = nullptr,
           py::arg("use_switch") = py::none(),
           "branches: cudaGraph_t integers (torch CUDAGraph(keep_graph=True).raw_cuda_graph()), "
           "cloned into the loop; index = block * phases + phase (per_block) or phase. "
           "use_switch: None = one SWITCH node where the build (CUDA >= 12.8) and the driver "
           "have it, else sibling IF nodes; True = SWITCH or CudaError; False = IF nodes.")
      .def("launch", &LoopGraph::launch, py::arg("stream"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_branches", &LoopGraph::num_branches)
      .def_property_readonly("kind", &LoopGraph::kind, "'switch' or 'if': what was built.");
}
