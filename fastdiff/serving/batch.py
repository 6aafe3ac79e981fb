"""One denoising run for a batch of tickets: the Engine.generate_ids call with per-row seeds,
the step callback that cancels rows whose callers went away and streams progress, and the
final answers. Runs on the worker thread."""
from __future__ import annotations

from typing import Callable, Optional

from .requests import GenerationResult, StreamEvent, Ticket

Finish = Callable[[Ticket, object, str], None]  # (ticket, item or None, outcome)


class Abort(Exception):
    """Raised from the step callback to end a run early: every row cancelled, or closing."""


def cut_at_stop(row: list[int], stops: set[int]) -> tuple[list[int], str]:
    """(tokens before the first stop id, finish_reason), cut the way Engine._completions cuts."""
    cut = next((j for j, t in enumerate(row) if t in stops), None)
    return (row, "length") if cut is None else (row[:cut], "eos")


class BatchRun:
    """Decodes `batch` (tickets with equal settings) as one generate_ids call. The step
    callback runs after every step, so a cancel takes effect at the next step whatever the
    block length; it reads the canvas only when a stream is due an event."""

    def __init__(self, engine, batch: list[Ticket], *, stops: set[int], finish: Finish,
                 closing: Callable[[], bool]) -> None:
        self.engine, self.batch, self.stops = engine, batch, stops
        self.finish, self.closing = finish, closing
        self.gen = batch[0].gen
        self.mask_id = engine.config.mask_token_id
        self.finished = [False] * len(batch)  # answered or cancelled: nothing more to send
        self.prev = [[self.mask_id] * self.gen.gen_length for _ in batch]  # last sent canvas
        self.sent_block = [-1] * len(batch)  # last block a "block" stream got its event for
        self.where = (0, 0)  # the last callback's (block, step)

    def run(self) -> None:
        graphs = getattr(self.engine, "graphs", False)  # a callback makes the loop eager
        hook = self.on_step if any(t.stream for t in self.batch) or not graphs else None
        try:
            comps = self.engine.generate_ids([t.ids for t in self.batch], self.gen,
                                             seeds=[t.seed for t in self.batch], on_step=hook,
                                             stream_interval="step")
        except Abort:
            comps = None
        except Exception as e:  # the run failed: its rows fail, the worker keeps serving
            for r, t in enumerate(self.batch):
                if not self.finished[r]:
                    self.finish(t, e, "failed")
            return
        for r, t in enumerate(self.batch):
            if self.finished[r]:
                continue
            if comps is None or t.cancelled:
                closed = self.closing() and not t.cancelled
                self.finish(t, RuntimeError("the AsyncEngine was closed during this request")
                            if closed else None, "failed" if closed else "cancelled")
                continue
            c = comps[r]
            res = GenerationResult(c.token_ids, c.text, c.finish_reason, len(t.ids),
                                   len(c.token_ids), c.nfe)
            self.finish(t, self._event(r, c.full_ids, *self.where, res) if t.stream else res,
                        "completed")

    def on_step(self, run, block: int, step: int) -> None:
        self.where = (block, step)
        for r, t in enumerate(self.batch):
            if t.cancelled and not self.finished[r]:
                run.cancel(r)
                self.finish(t, None, "cancelled")
                self.finished[r] = True
        if all(self.finished) or self.closing():
            raise Abort()  # nobody is waiting for this run
        self._stream(run, block, step)

    def _stream(self, run, block: int, step: int) -> None:
        """Events for the streams due one: every step ("step"), or once the row's current
        block is complete or the block's last step ran ("block"); the final event as soon as
        the row is done (early stop)."""
        gen = self.gen
        live = [r for r, t in enumerate(self.batch) if t.stream and not self.finished[r]]
        last_step = step + 1 >= gen.max_steps_per_block
        if not live or (gen.uses_steps and not last_step and not gen.stop_at_eos and
                        all(self.batch[r].interval == "block" for r in live)):
            return  # the fixed schedule mid-block, no early stop: no stream is due an event
        canvas = run.tokens().tolist()  # [B, gen_length], one host copy per callback
        done = run.done()
        nfe = run.nfe() if any(done[r] for r in live) else None
        Lb = gen.block_length
        for r in live:
            t, row = self.batch[r], canvas[r]
            if done[r]:
                toks, reason = cut_at_stop(row, self.stops)
                res = GenerationResult(toks, self._decode(toks), reason, len(t.ids), len(toks),
                                       nfe[r])
                self.finish(t, self._event(r, row, block, step, res), "completed")
                self.finished[r] = True
            elif t.interval == "step" or (self.sent_block[r] < block and (
                    last_step or self.mask_id not in row[block * Lb:(block + 1) * Lb])):
                self.sent_block[r] = block
                t.deliver(self._event(r, row, block, step))

    def _event(self, r: int, row: list[int], block: int, step: int,
               res: Optional[GenerationResult] = None) -> StreamEvent:
        prev = self.prev[r]
        new = {j: tok for j, (old, tok) in enumerate(zip(prev, row)) if old != tok}
        self.prev[r] = list(row)
        if res is not None:
            return StreamEvent(new, list(row), res.text, block, step, True, res.finish_reason,
                               res.usage(), res)
        first_mask = next((j for j, tok in enumerate(row) if tok == self.mask_id), len(row))
        text = self._decode(cut_at_stop(row[:first_mask], self.stops)[0])
        return StreamEvent(new, list(row), text, block, step)

    def _decode(self, ids: list[int]) -> Optional[str]:
        tok = self.engine.tokenizer
        return tok.decode(ids) if tok is not None else None

