"""`--show-steps`: the denoising drawn live in a terminal from the engine's step callback.

Masked positions show as a placeholder and fill in as the loop commits them. On a TTY each
frame redraws the previous one in place (ANSI cursor movement); elsewhere (a pipe, a log file)
each step prints one line, newlines in the text shown as the two characters \\n (\\r too)."""
from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, Optional, Sequence, TextIO

PLACEHOLDER = "░"
TTY_FRAME_S = 0.03  # shortest time a frame stays on a TTY, so a fast model is still watchable
_DIM, _RESET = "\x1b[2m", "\x1b[0m"

Decode = Callable[[list[int]], str]


def render(tokens: Sequence[int], *, mask_id: int, decode: Optional[Decode] = None,
           stop_ids: Sequence[int] = (), placeholder: str = PLACEHOLDER,
           masked: Optional[Callable[[str], str]] = None) -> str:
    """One row of the canvas [gen_length] -> text: each masked position as `placeholder`, each
    run of committed tokens decoded together (decode=None: the ids, space separated). The text
    ends before the first committed stop token (EOS / EoT): what follows it is never part of
    the answer. masked: optional wrapper for each run of placeholders (e.g. ANSI dim)."""
    toks = list(tokens)
    cut = next((j for j, t in enumerate(toks) if t in stop_ids), len(toks))
    out: list[str] = []
    j = 0
    while j < cut:
        k = j
        is_mask = toks[j] == mask_id
        while k < cut and (toks[k] == mask_id) == is_mask:
            k += 1
        run = toks[j:k]
        if is_mask:
            text = placeholder * len(run)
            out.append(masked(text) if masked else text)
        elif decode is not None:
            out.append(decode(run))
        else:
            out.append((" " if out else "") + " ".join(str(t) for t in run) + " ")
        j = k
    return "".join(out)


def status(block: int, step: int, committed: int, total: int) -> str:
    """The frame's header: position in the loop and progress."""
    return f"[block {block} step {step}] {committed}/{total} committed"


def _rows_on_screen(text: str, width: int) -> int:
    """Terminal rows `text` occupies at `width` columns (every character one column wide)."""
    return sum(max(1, -(-len(line) // width)) for line in text.split("\n"))


class LiveView:
    """An on_step callback (`engine.generate_ids(..., on_step=view, stream_interval="step")`)
    that draws row `row` of the run after every step. prompt: text shown before the canvas.
    finish() clears the last frame on a TTY (the caller prints the final text); render_s is the
    time spent drawing, so a caller can leave it out of its timing."""

    def __init__(self, engine, prompt: str = "", *, out: Optional[TextIO] = None,
                 tty: Optional[bool] = None, row: int = 0, placeholder: str = PLACEHOLDER,
                 frame_s: Optional[float] = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.prompt = prompt
        self.row = row
        self.placeholder = placeholder
        self.mask_id = engine.config.mask_token_id
        tok = engine.tokenizer
        self.decode: Optional[Decode] = tok.decode if tok is not None else None
        eot = getattr(engine, "eot_id", None)
        self.stop_ids = {engine.config.eos_token_id} | ({eot} if eot is not None else set())
        self.frame_s = (TTY_FRAME_S if self.tty else 0.0) if frame_s is None else frame_s
        self.frames = 0
        self.render_s = 0.0
        self._rows = 0  # terminal rows the previous frame occupies (TTY)
        self._last = 0.0

    def frame(self, tokens: Sequence[int], block: int, step: int) -> str:
        """The frame's text for one canvas row: header line, then prompt + canvas."""
        committed = sum(t != self.mask_id for t in tokens)
        dim = (lambda s: _DIM + s + _RESET) if self.tty else None
        canvas = render(tokens, mask_id=self.mask_id, decode=self.decode, stop_ids=self.stop_ids,
                        placeholder=self.placeholder, masked=dim)
        return status(block, step, committed, len(tokens)) + "\n" + self.prompt + canvas

    def __call__(self, run, block: int, step: int) -> None:
        t0 = time.perf_counter()
        tokens = run.tokens()[self.row].tolist()  # a host read between steps, outside the step
        text = self.frame(tokens, block, step)
        if self.tty:
            self._draw(text)
            wait = self.frame_s - (time.perf_counter() - self._last)
            if wait > 0:
                time.sleep(wait)
            self._last = time.perf_counter()
        else:
            head, body = text.split("\n", 1)
            body = body.replace("\r", "\\r").replace("\n", "\\n")
            self.out.write(head + " | " + body + "\n")
        self.out.flush()
        self.frames += 1
        self.render_s += time.perf_counter() - t0

    def _draw(self, text: str) -> None:
        """Replace the previous frame; a frame taller than the terminal keeps its header and
        its last lines (the cursor cannot move above the screen's top)."""
        size = shutil.get_terminal_size((80, 24))
        width, height = max(1, size.columns), max(2, size.lines)
        lines = text.replace("\t", "    ").replace("\r", "").split("\n")  # 1 column each
        plain = [line.replace(_DIM, "").replace(_RESET, "") for line in lines]
        while len(lines) > 2 and _rows_on_screen("\n".join(plain), width) > height - 1:
            del lines[1], plain[1]
        self._erase()
        self.out.write("\n".join(lines) + "\n")
        self._rows = _rows_on_screen("\n".join(plain), width)

    def _erase(self) -> None:
        if self._rows:  # cursor to the first row of the previous frame, clear to the end
            self.out.write(f"\x1b[{self._rows}F\x1b[J")
            self._rows = 0

    def finish(self) -> None:
        if self.tty:
            self._erase()
            self.out.flush()
