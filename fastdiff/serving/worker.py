"""The worker thread that owns the Engine: a bounded queue of tickets, and the batcher that
picks the oldest ticket plus compatible queued ones (equal settings, same 64-token prompt-length
bucket) once the batch is full or the oldest has waited max_wait_s. Integers, lists and a
condition variable; BatchRun does the decoding."""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Optional

from .batch import BatchRun
from .requests import OverloadedError, Ticket

# upper bounds (seconds) of the queue-wait histogram stats() reports
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                      60.0, float("inf"))


class Worker:
    """Batches tickets into runs. submit/cancel/close come from any thread; run() is the
    worker thread's body."""

    def __init__(self, engine, *, max_batch_size: int, max_wait_s: float, max_queue: int) -> None:
        self.engine = engine
        self.max_batch_size, self.max_wait_s, self.max_queue = max_batch_size, max_wait_s, max_queue
        eot = getattr(engine, "eot_id", None)
        self.stops = {engine.config.eos_token_id} | ({eot} if eot is not None else set())
        self.cond = threading.Condition()
        self.pending: list[Ticket] = []
        self.running: list[Ticket] = []
        self.closing = False
        self.counts = Counter()  # submitted, completed, failed, cancelled, rejected, batches, rows
        self.batch_sizes: Counter = Counter()  # rows per run -> runs
        self.waits: Counter = Counter()  # queue-wait bucket bound -> requests
        self.wait_sum = 0.0

    # ------------------------------------------------------------------ caller side
    def submit(self, ticket: Ticket) -> None:
        with self.cond:
            if self.closing:
                raise RuntimeError("the AsyncEngine is closed")
            if len(self.pending) >= self.max_queue:
                self.counts["rejected"] += 1
                raise OverloadedError(f"the server is overloaded: {len(self.pending)} requests "
                                      f"are waiting (max_queue={self.max_queue}); retry later")
            self.pending.append(ticket)
            self.counts["submitted"] += 1
            self.cond.notify()

    def cancel(self, ticket: Ticket) -> None:
        """The caller went away: drop the ticket if queued, else its row leaves the run at the
        next step callback."""
        if ticket.cancelled:
            return
        ticket.cancelled = True
        with self.cond:
            if ticket in self.pending:
                self.pending.remove(ticket)
                self.counts["cancelled"] += 1

    def close(self) -> None:
        with self.cond:
            self.closing = True
            dropped, self.pending = self.pending, []
            self.cond.notify_all()
        for t in dropped:
            t.deliver(RuntimeError("the AsyncEngine was closed before this request ran"))

    def stats(self) -> dict:
        with self.cond:
            queued = sum(not t.cancelled for t in self.pending)
            return {"queue_depth": queued, "running_batch_size": len(self.running),
                    "max_batch_size": self.max_batch_size, "max_queue": self.max_queue,
                    **{f"requests_{k}": self.counts[k] for k in
                       ("submitted", "completed", "failed", "cancelled", "rejected")},
                    "batches": self.counts["batches"], "batched_rows": self.counts["rows"],
                    "batch_sizes": dict(self.batch_sizes),
                    "queue_wait_s": {"count": sum(self.waits.values()), "sum": self.wait_sum,
                                     "buckets": {b: sum(v for k, v in self.waits.items()
                                                        if k <= b)
                                                 for b in QUEUE_WAIT_BUCKETS}}}

    # ------------------------------------------------------------------ worker thread
    def run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                BatchRun(self.engine, batch, stops=self.stops, finish=self._finish,
                         closing=lambda: self.closing).run()
            except Exception as e:  # a bug past generate_ids: answer the batch, keep serving
                for t in batch:
                    t.deliver(e)
            with self.cond:
                self.running = []

    def _next_batch(self) -> Optional[list[Ticket]]:
        """The oldest ticket and up to max_batch_size - 1 queued ones with its key, once the
        batch is full or the oldest has waited max_wait_s; None when closing."""
        with self.cond:
            while True:
                if self.closing:
                    return None
                dropped = sum(t.cancelled for t in self.pending)  # flagged, never removed
                if dropped:
                    self.counts["cancelled"] += dropped
                    self.pending = [t for t in self.pending if not t.cancelled]
                if not self.pending:
                    self.cond.wait()
                    continue
                first = self.pending[0]
                same = [t for t in self.pending if t.key == first.key][: self.max_batch_size]
                wait = first.submitted + self.max_wait_s - time.monotonic()
                if len(same) >= self.max_batch_size or wait <= 0:
                    self._start(same)
                    return same
                self.cond.wait(wait)

    def _start(self, batch: list[Ticket]) -> None:
        """Move `batch` from the queue to the running run and count it (the lock is held)."""
        chosen = {t.id for t in batch}
        self.pending = [t for t in self.pending if t.id not in chosen]
        self.running = batch
        self.counts["batches"] += 1
        self.counts["rows"] += len(batch)
        self.batch_sizes[len(batch)] += 1
        now = time.monotonic()
        for t in batch:  # submission -> the start of its run
            waited = now - t.submitted
            self.wait_sum += waited
            self.waits[next(b for b in QUEUE_WAIT_BUCKETS if waited <= b)] += 1

    def _finish(self, t: Ticket, item, outcome: str) -> None:
        with self.cond:
            self.counts[outcome] += 1
        if item is not None:
            t.deliver(item)

