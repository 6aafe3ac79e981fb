"""--show-steps: the canvas renderer, the live view (pipe and TTY) and the CLI on a checkpoint."""
import io
from types import SimpleNamespace

import pytest
import torch

from fastdiff.cli import main as cli_main
from fastdiff.live import PLACEHOLDER, LiveView, _rows_on_screen, render

MASK, EOS = 9, 7


def dec(ids):
    return "".join(chr(ord("a") + i) for i in ids)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: more threads only oversubscribe it
    yield
    torch.set_num_threads(n)


def test_render_placeholders_and_runs():
    assert render([0, 1, MASK, MASK, 2], mask_id=MASK, decode=dec) == f"ab{PLACEHOLDER * 2}c"
    assert render([MASK] * 3, mask_id=MASK, decode=dec) == PLACEHOLDER * 3
    assert render([], mask_id=MASK, decode=dec) == ""
    runs = []
    render([0, 1, MASK, 2, 3, MASK], mask_id=MASK, decode=lambda r: runs.append(r) or "")
    assert runs == [[0, 1], [2, 3]]  # each committed run decoded as a whole


def test_render_cuts_at_the_first_committed_stop():
    assert render([0, MASK, EOS, 1, MASK], mask_id=MASK, decode=dec, stop_ids={EOS}) == \
        "a" + PLACEHOLDER
    assert render([EOS, 0], mask_id=MASK, decode=dec, stop_ids={EOS}) == ""


def test_render_ids_without_tokenizer_and_custom_placeholder():
    assert render([5, 6, MASK, 12], mask_id=MASK).split() == ["5", "6", PLACEHOLDER, "12"]
    out = render([MASK, 0, MASK, MASK], mask_id=MASK, decode=dec, placeholder="_",
                 masked=lambda s: f"[{s}]")
    assert out == "[_]a[__]"


def test_rows_on_screen_counts_wrapped_lines():
    assert _rows_on_screen("abc\n\nabcdefghi", 4) == 1 + 1 + 3
    assert _rows_on_screen("abcd", 4) == 1


def _fake_engine(tokenizer=True):
    tok = SimpleNamespace(decode=dec) if tokenizer else None
    return SimpleNamespace(config=SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS),
                           tokenizer=tok, eot_id=None)


def _run(row):
    return SimpleNamespace(tokens=lambda: torch.tensor([row]))


def test_live_view_on_a_pipe_prints_one_line_per_step():
    out = io.StringIO()
    view = LiveView(_fake_engine(), "p:\n", out=out)
    for i, row in enumerate([[MASK, MASK, MASK], [0, MASK, MASK], [0, 1, EOS]]):
        view(_run(row), 0, i)
    view.finish()
    assert out.getvalue().split("\n") == [
        f"[block 0 step 0] 0/3 committed | p:\\n{PLACEHOLDER * 3}",
        f"[block 0 step 1] 1/3 committed | p:\\na{PLACEHOLDER * 2}",
        "[block 0 step 2] 3/3 committed | p:\\nab", ""]
    assert view.frames == 3 and "\x1b" not in out.getvalue()


def test_live_view_on_a_tty_redraws_in_place(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    out = io.StringIO()
    view = LiveView(_fake_engine(), "p:\n", out=out, tty=True, frame_s=0)
    view(_run([MASK, MASK]), 0, 0)
    first = out.getvalue()
    assert first.startswith("[block 0 step 0]") and "\x1b[2m" in first  # placeholders dimmed
    view(_run([0, MASK]), 0, 1)
    second = out.getvalue()[len(first):]
    assert second.startswith("\x1b[3F\x1b[J[block 0 step 1]")  # 3 rows up: header, p:, canvas
    view.finish()
    assert out.getvalue().endswith("\x1b[3F\x1b[J")  # the caller prints the final text


def test_live_view_clips_a_frame_taller_than_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "4")
    out = io.StringIO()
    view = LiveView(_fake_engine(), "".join(f"line{i}\n" for i in range(10)), out=out, tty=True,
                    frame_s=0)
    view(_run([0, MASK]), 0, 0)
    lines = out.getvalue().split("\n")[:-1]
    assert len(lines) == 3 and lines[0].startswith("[block 0 step 0]")
    assert lines[1:] == ["line9", "a" + "\x1b[2m" + PLACEHOLDER + "\x1b[0m"]


def test_cli_show_steps_draws_frames_then_the_final_text(tiny_ckpt, capsys):
    args = ["generate", "--model", str(tiny_ckpt), "--prompt", "hello", "--gen-length", "16",
            "--block-length", "8", "--steps", "16", "--seed", "0"]
    assert cli_main(args) == 0
    plain = capsys.readouterr().out
    assert cli_main(args + ["--show-steps"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.split("\n")
    frames = [line for line in lines if line.startswith("[block ")]
    assert len(frames) == 16  # every step
    for i, f in enumerate(frames):
        assert f.startswith(f"[block {i // 8} step {i % 8}] {i + 1}/16 committed | hello")
    assert PLACEHOLDER in frames[0] and PLACEHOLDER not in frames[-1]
    final = "\n".join(lines[len(frames):])
    assert final == plain  # the same answer as without --show-steps
    shown = final[:-1].replace("\r", "\\r").replace("\n", "\\n")  # print's newline off
    assert frames[-1].split(" | ", 1)[1] == shown  # the last frame is the answer
    assert "--show-steps" in cap.err and "NFE 16" in cap.err
