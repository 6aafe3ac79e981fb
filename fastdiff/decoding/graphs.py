"""CUDA-graph runner: a whole generation as one graph launch (design.md "The step").

Per shape bucket (batch, prompt length, gen length, block length, cache mode, policy, scorer) a
`GraphRunner` owns a static DecodeState and a Control, warms the loop's `step` up, then captures
one step graph per phase, whatever the number of blocks: the step reads its block and step index
from the control words in device memory, so a cache mode with a refresh forward has two graphs
(refresh, cached step) and no cache has one. Then, in order of preference:
- "while": fastdiff._C.LoopGraph: WHILE { control kernel; one SWITCH (or sibling IF nodes) on
  the branch -> step graph; progress kernel }: the control kernel advances the block, picks
  refresh or cached, stops, and the host only launches (zero round trips until the result is
  read). Any failure to build it (a node type conditional bodies reject, an old driver) is
  logged and falls back to replay;
- "replay": the host replays the step graphs, reading the control flags between steps when the
  step sequence depends on the data (threshold / factor or early stop; one 32-byte read per
  step) and never when it does not (fixed schedule, no early stop). Used when fastdiff._C is
  missing, cannot run here (its self test failed once: never used, replay included, then the
  control's torch mirror runs) or the driver lacks conditional nodes.
All captures share one memory pool: a step's results are written in place into the static state
and KV store (never into the pool), and the graphs never run concurrently, so any replay order
is safe. Nothing here touches CUDA at import time."""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Iterator, Optional

import torch

from ..ops import cuda_ext
from .buckets import BATCH_BUCKETS, PROMPT_BUCKET, batch_bucket, bucket_state, prompt_bucket
from .cache import CACHED, REFRESH
from .control import CTL_BLOCK, CTL_STEP, Control, ControlSpec
from .loop import Request, step
from .progress import Progress, ProgressBuffer
from .state import DecodeState


log = logging.getLogger(__name__)


def static_branches(spec: ControlSpec) -> list[int]:
    """The branch of every step when the sequence does not depend on the data (fixed schedule,
    no early stop): each block runs exactly steps_per_block steps, its first the refresh."""
    out = []
    for b in range(spec.n_blocks):
        base = b * spec.phases if spec.per_block else 0
        out += [base] + [base + spec.phases - 1] * (spec.steps_per_block - 1)
    return out


class CudaGraphCapture:
    """Captures the step into torch CUDA graphs (keep_graph: the WHILE runner clones the raw
    cudaGraph_t), all in one memory pool, after a warm-up on a side stream (Triton compiles and
    autotunes before capture)."""

    supports_while = True

    def __init__(self) -> None:
        self.pool = None

    def warmup(self, fn) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, fn) -> "torch.cuda.CUDAGraph":
        g = torch.cuda.CUDAGraph(keep_graph=True)
        with torch.cuda.graph(g, pool=self.pool):
            fn()
        self.pool = self.pool or g.pool()
        return g


class EagerCapture:
    """Stand-in "graphs" that call the step: runs the runner's host-replay logic on the CPU."""

    supports_while = False

    class Graph:
        def __init__(self, fn) -> None:
            self.replay = fn

        def instantiate(self) -> None:
            pass

    def warmup(self, fn) -> None:
        fn()

    def capture(self, fn) -> "EagerCapture.Graph":
        return self.Graph(fn)


class GraphRunner:
    """Captured step graphs + loop for one shape bucket. The static `state` is the bucket's
    canvas: `load()` copies a request's state in, `run()` / `stream()` decode it, and the
    result stays in `state` (read it back once, after the loop)."""

    def __init__(self, model, ops, state: DecodeState, req: Request, *, mode: str = "auto",
                 progress: bool = False, warmup: int = 1, capture=None,
                 use_ext: bool = True) -> None:
        """capture: CudaGraphCapture() by default (EagerCapture() for CPU tests of the replay
        logic); use_ext=False: the control's torch mirror instead of fastdiff._C."""
        if capture is None and state.x.device.type != "cuda":
            raise ValueError("GraphRunner needs a CUDA state; on the CPU use loop.denoise")
        if mode not in ("auto", "while", "replay"):
            raise ValueError(f"mode={mode!r} is invalid; allowed: 'auto', 'while', 'replay'")
        self.model, self.ops, self.state = model, ops, state
        self.spec = ControlSpec.for_request(req, state, per_block=False)
        self.control = Control(state, self.spec)
        self.req = req
        self.ext = cuda_ext.load_runnable() if use_ext else None
        self.capturer = capture or CudaGraphCapture()
        self.mode = self._pick_mode(mode)
        self.progress = ProgressBuffer(self.ext, state.batch, state.gen_length) \
            if progress and self.ext is not None else None
        self._specs()
        self._loaded: Optional[torch.cuda.Event] = None  # recorded after load()'s copies
        self._initial = self._snapshot()
        self.graphs = self._capture(warmup)
        self.loop = self._build_loop() if self.mode == "while" else None
        if self.loop is None:  # replay, chosen or after a failed WHILE build
            self.mode = "replay"
            for g in self.graphs:
                g.instantiate()

    # ------------------------------------------------------------------------- building
    def _pick_mode(self, mode: str) -> str:
        if mode == "replay":
            return mode
        support = self.ext.conditional_support() if self.ext is not None else {}
        ok = support.get("while_node") == "ok" and support.get("if_node") == "ok" and \
            getattr(self.capturer, "supports_while", False)
        if mode == "while" and not ok:
            raise RuntimeError(f"mode='while' needs fastdiff._C and conditional graph nodes: "
                               f"{cuda_ext.conditional_support()}")
        return "while" if ok else "replay"

    def _phases(self) -> list[int]:
        """The phase of each branch, in branch order: [REFRESH, CACHED] or [REFRESH]."""
        return [REFRESH, CACHED][: self.spec.phases]

    def _step(self, phase: int) -> None:
        """One step reading its block and step index from the control words (device)."""
        ctl = self.control.ctl
        step(self.model, self.ops, self.state, self.req, phase, ctl[CTL_BLOCK], ctl[CTL_STEP])

    def _snapshot(self) -> list[torch.Tensor]:
        return [getattr(self.state, name).clone() for name in DecodeState.STEPPED]

    def _restore(self, saved: list[torch.Tensor]) -> None:
        for name, src in zip(DecodeState.STEPPED, saved, strict=True):
            getattr(self.state, name).copy_(src)
        self.control.reset()

    def _capture(self, warmup: int) -> list:
        st, cap = self.state, self.capturer
        self.req.policy.bind(st)  # device tensors, before capture

        def warm() -> None:
            for _ in range(warmup):
                for phase in self._phases():
                    self.control.update(st)
                    self._step(phase)

        cap.warmup(warm)
        self._restore(self._initial)
        return [cap.capture(lambda phase=phase: self._step(phase)) for phase in self._phases()]

    def _build_loop(self):
        """The WHILE graph, or None (logged) when building it fails: replay then runs."""
        try:
            raws = [g.raw_cuda_graph() for g in self.graphs]
            if hasattr(self.ext, "graph_node_types"):
                for j, raw in enumerate(raws):
                    log.info("step graph %d (%s) node types: %s", j,
                             ["refresh", "cached"][j] if self.spec.phases == 2 else "step",
                             sorted(set(self.ext.graph_node_types(raw))))
            return self.ext.LoopGraph(raws, self._control_spec, self._progress_spec,
                                      use_switch=cuda_ext.switch_works(self.ext))
        except Exception as e:  # noqa: BLE001 (any CUDA or binding failure: replay instead)
            log.warning("fastdiff: building the WHILE loop graph failed (%s: %s); falling back "
                        "to host replay of the step graphs (same tokens, one flag read per "
                        "step)", type(e).__name__, e)
            return None

    # ------------------------------------------------------------------------- running
    def load(self, state: DecodeState) -> None:
        """Copy a request's (bucket-shaped) state into the static one; reset the control."""
        st = self.state
        if state.x.shape != st.x.shape or state.prompt_len != st.prompt_len:
            raise ValueError(f"state {tuple(state.x.shape)} P={state.prompt_len} does not fit "
                             f"the bucket {tuple(st.x.shape)} P={st.prompt_len}")
        for name in DecodeState.TENSORS:
            getattr(st, name).copy_(getattr(state, name))
        self.control.reset()  # also the progress sequence counter
        if self.progress is not None:
            self.progress.array.zero_()
        if st.x.is_cuda:
            self._loaded = torch.cuda.Event()
            self._loaded.record()

    def cancel(self, row: int) -> None:
        """Cancel one row of the running (or loaded) generation: its cancel flag is set from a
        side stream, so it lands while a launched loop runs; the next step freezes the row
        like an early-stopped one and the other rows are undisturbed. The fill waits for the
        last load() (it cannot be overwritten by it) and the current stream waits for the
        fill (a launch issued after cancel() sees it; it cannot land in a later request)."""
        flag = self.state.cancel[row:row + 1]
        if flag.device.type != "cuda":
            flag.fill_(True)
            return
        side = torch.cuda.Stream(device=flag.device)
        if self._loaded is not None:
            side.wait_event(self._loaded)
        with torch.cuda.stream(side):
            flag.fill_(True)
        torch.cuda.current_stream(flag.device).wait_stream(side)

    def set_policy_value(self, value: float) -> None:
        """Per-request threshold / factor of a captured threshold or factor policy."""
        self.req.policy.set_value(value)

    def launch(self) -> None:
        """Issue the whole generation on the current stream (asynchronous in "while" mode)."""
        if self.loop is not None:
            self.loop.launch(torch.cuda.current_stream().cuda_stream)
        else:
            self._replay()

    def run(self) -> DecodeState:
        self.launch()
        return self.state

    def _replay(self) -> None:
        """Host replay: the control update on the device (the CUDA kernel, else its torch
        mirror), then the step graph it picked."""
        s, data_dependent = self.spec, self._data_dependent()
        cuda = self.ext is not None and self.state.x.is_cuda
        stream = torch.cuda.current_stream().cuda_stream if cuda else 0
        if not data_dependent:  # fixed schedule, no early stop: the sequence is known
            for branch in static_branches(s):
                self._control_update(stream)
                self.graphs[branch].replay()
                self._progress(stream)
            self._control_update(stream)  # marks the end (running = 0)
            self._progress(stream)
            return
        for _ in range(s.max_iters + 1):
            self._control_update(stream)
            flags = self.control.read()  # the one read between steps
            if not flags.running:
                break
            self.graphs[flags.branch].replay()
            self._progress(stream)
        self._progress(stream)

    def _data_dependent(self) -> bool:
        """Whether the step sequence depends on the tokens: no fixed schedule, early stop, or
        a rule whose blocks can end before their last step (the control then moves on)."""
        return self.spec.steps_per_block == 0 or self.req.stop_ids is not None or \
            self.req.policy.ends_blocks_early

    def _control_update(self, stream: int) -> None:
        if self.ext is not None:
            self.ext.control_update(self._control_spec, stream)
        else:
            self.control.update(self.state)

    def _progress(self, stream: int) -> None:
        if self.progress is not None:
            self.ext.progress_write(self._progress_spec, stream)

    def _specs(self) -> None:
        """fastdiff._C specs over the static tensors (their addresses never change)."""
        ext, st = self.ext, self.state
        self._control_spec = self._progress_spec = None
        if ext is None:
            return
        self._control_spec = self.control.cuda_spec(ext, st)
        if self.progress is not None:
            self._progress_spec = ext.ProgressSpec(
                x=st.x.data_ptr(), ctl=self.control.ctl.data_ptr(), out=self.progress.device,
                mask_id=st.mask_id, batch=st.batch, length=st.x.shape[1],
                prompt_len=st.prompt_len, block_length=self.spec.block_length)

    def stream(self, poll_s: float = 2e-4) -> Iterator[tuple[int, torch.Tensor]]:
        """Launch, then yield (block index, tokens [B, Lb]) for each block as soon as the
        progress memory shows it final (the next block stepped, or the loop done). Polls host
        memory only: the launch is not synchronized until the caller reads `state`."""
        if self.progress is None:
            raise RuntimeError("stream() needs progress=True and fastdiff._C")
        failure: list[BaseException] = []
        if self.loop is None:  # host replay runs in this thread: run it in another one
            worker = threading.Thread(target=self._replay_on,
                                      args=(torch.cuda.current_stream(), failure))
            worker.start()
            ended = None
        else:
            worker = None
            self.launch()
            ended = torch.cuda.Event()
            ended.record()
        Lb, sent = self.spec.block_length, 0
        while True:
            p = self.progress.read()
            if (p is None or p.running) and (  # a dead worker, or a finished (faulted) launch:
                    not worker.is_alive() if worker is not None else ended.query()):
                if failure:  # (query() raises the launch's CUDA error, if any)
                    raise failure[0]
                p = self._settle()  # the end mark lands shortly after the work that wrote it
                if p is None:
                    raise RuntimeError("the generation stopped without marking its end in the "
                                       "progress memory")
            if p is None:
                time.sleep(poll_s)
                continue
            final = p.block if p.running else self.spec.n_blocks
            while sent < final:
                yield sent, p.tokens[:, sent * Lb:(sent + 1) * Lb]
                sent += 1
            if not p.running:
                break
            time.sleep(poll_s)
        if worker is not None:
            worker.join()

    def _settle(self, wait_s: float = 1.0) -> Optional[Progress]:
        """After the work ended: the progress memory's end mark (host-mapped writes become
        visible shortly after the kernel that made them), or None if none comes in wait_s."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            p = self.progress.read()
            if p is not None and not p.running:
                return p
            time.sleep(1e-3)
        return None

    def _replay_on(self, stream: torch.cuda.Stream, failure: list) -> None:
        try:
            with torch.cuda.stream(stream):
                self._replay()
        except BaseException as e:  # noqa: BLE001 (handed to stream(), which raises it)
            failure.append(e)


class GraphCache:
    """The engine's runners, one per shape bucket and captured settings; `decode` runs one
    request's state through its bucket's runner and writes the result back into that state.
    A new bucket costs a warm-up and a capture; later requests of the bucket only copy in,
    launch and copy out (device copies: nothing is read back)."""

    def __init__(self, model, ops, pad_id: int, *, mode: str = "auto", capture=None,
                 use_ext: bool = True, max_runners: int = 8) -> None:
        """max_runners bounds the captured shape buckets (each holds its graphs' memory pool):
        the least recently used one is dropped when a new bucket needs room."""
        if max_runners < 1:
            raise ValueError(f"max_runners={max_runners} is invalid: expected >= 1")
        self.model, self.ops, self.pad_id, self.mode = model, ops, pad_id, mode
        self._capture, self._use_ext = capture, use_ext
        self.max_runners = max_runners
        self.runners: OrderedDict = OrderedDict()

    def clear(self) -> None:
        """Drop every runner (their graphs hold addresses of a KV store being replaced)."""
        self.runners.clear()

    @staticmethod
    def key(state: DecodeState, req: Request) -> tuple:
        """What a captured graph bakes in besides the tensors' values."""
        pol = req.policy
        store = req.store.data.data_ptr() if req.store is not None else None
        return (state.batch, state.prompt_len, state.gen_length, req.block_length,
                req.strategy.name, req.scorer, type(pol).__name__, pol.steps_per_block,
                getattr(pol, "alg_temp", None), req.shift,
                req.stop_ids is not None, req.eos_id, req.cfg_scale, store)  # stop ids: engine

    def decode(self, state: DecodeState, req: Request) -> DecodeState:
        B, P = state.batch, state.prompt_len
        big = bucket_state(state, batch_bucket(B), prompt_bucket(P), self.pad_id)
        key = self.key(big, req)
        runner = self.runners.get(key)
        if runner is None:
            while len(self.runners) >= self.max_runners:
                self.runners.popitem(last=False)  # least recently used
            static = bucket_state(big, big.batch, big.prompt_len, self.pad_id)  # a copy
            capture = self._capture() if self._capture is not None else None
            runner = GraphRunner(self.model, self.ops, static, req, mode=self.mode,
                                 capture=capture, use_ext=self._use_ext)
            self.runners[key] = runner
        self.runners.move_to_end(key)
        runner.load(big)
        if req.policy.steps_per_block is None:  # threshold / factor: value not baked in
            runner.set_policy_value(req.policy.value)
        out = runner.run()
        extra = out.prompt_len - P
        state.x.copy_(out.x[:B, extra:])
        for name in DecodeState.COUNTERS:
            getattr(state, name).copy_(getattr(out, name)[:B])
        return state


__all__ = ["BATCH_BUCKETS", "PROMPT_BUCKET", "CudaGraphCapture", "EagerCapture", "GraphCache", "GraphRunner",
           "Progress", "ProgressBuffer", "batch_bucket", "bucket_state", "prompt_bucket",
           "static_branches"]
