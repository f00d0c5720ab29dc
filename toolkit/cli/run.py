"""``yolokit run``: its options are built from the declarations of :class:`toolkit.jobs.records.RunOptions` (the
source, then the detector, saving, drawing, tiling, run-folder and engine groups, each under its help panel)."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any

import typer

from toolkit.cli.params import collect, command, context, flag
from toolkit.cli.root import app
from toolkit.jobs.records import RunOptions


class Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled, self.label = enabled and sys.stderr.isatty(), label
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=None, rate="")
        return self

    def update(self, done: int, total: int, *_: Any) -> None:
        """Both the run's ticks (each image or frame inferred) and its progress (each recorded) call this: the bar
        shows the furthest of them."""
        if self._bar is not None:
            done = max(done, int(self._bar.tasks[0].completed))
            elapsed = self._bar.tasks[0].elapsed or 0.0
            rate = f"{done / elapsed:.1f} img/s" if elapsed > 0 else ""
            self._bar.update(self._task, completed=done, total=total or None, rate=rate)  # 0: not known

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def run(**kwargs: Any) -> None:
    """Detect objects in images, videos or live streams and write annotated images, labels and a summary.

    Every input ends up processed or listed in failures.jsonl with its reason; the exit code is 1 when
    any input failed. manifest.jsonl records each finished input; --resume continues a killed run.
    The defaults are YOLOv5's detect.py's: the same detections as the official code.

    Examples:\n
      yolokit run photos/ --save-txt --nosave\n
      yolokit run 'survey/**/*.jpg' --weights yolov5s.onnx --save-json --json\n
      yolokit run huge.tif --tile 640 --save-txt\n
      yolokit run rtsp://camera/stream --vid-stride 2 --nosave --save-txt\n
      yolokit run /shared/survey --engine ray --address auto --workers 8 --save-txt --nosave
    """
    from toolkit.jobs.run import format_summary
    from toolkit.jobs.run import run as run_job

    json_out = kwargs.pop("json_out")
    invocation = kwargs.pop("ctx").obj
    opts = collect(RunOptions, kwargs)
    # stdout carries only the summary: anything a runtime prints meanwhile (Ray prints its workers' errors
    # there) goes to stderr
    with Progress(not json_out, "detecting") as bar, contextlib.redirect_stdout(sys.stderr):
        # where the process ends right after (exit_now), the model's release is not waited for
        summary = run_job(opts, progress=bar.update, release=not getattr(invocation, "exits", False),
                          ticks=bar.update)
    if json_out:
        typer.echo(json.dumps(summary.to_dict(), indent=1))
    else:
        typer.echo(format_summary(summary))
    if summary.interrupted:
        raise typer.Exit(130)
    if not summary.ok:
        raise typer.Exit(1)


app.command()(command(run, RunOptions, [flag("json_out", "Print the summary as JSON on stdout.", ("--json",)),
                                        context()]))
