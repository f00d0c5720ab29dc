"""The root of the ``yolokit`` command: its Typer app, entry point and exit codes. The commands live beside it
(``run``, ``export``, ``serve``, ``tools``: val, info, bench, weights) and register on :data:`app` when
:func:`toolkit.cli.commands` imports them (``from toolkit.cli import app, main`` and :func:`toolkit.cli.entry` do).

Exit codes: 0 success; 1 some inputs failed (the rest were processed); 2 bad input or options;
3 bad model file; 4 backend or device unavailable; 5 download failed; 6 export failed; 7 output not
writable; 130 interrupted; 143 stopped by SIGTERM (as 130).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import typer

from toolkit.errors import YolokitError

app = typer.Typer(name="yolokit", help="Run YOLOv5 over many images: detect, validate, export, benchmark.\n\n"
                  "Quick start: `yolokit run` (sample photos, yolov5n) or `yolokit run photos/ --save-txt`.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
weights_app = typer.Typer(help="List and download official YOLOv5 checkpoints (each download is verified against its "
                          "sha256).", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def err(msg: str) -> None:
    typer.echo(f"yolokit: {msg}", err=True)


@dataclass(frozen=True)
class Invocation:
    """What a command knows of the process it runs in (Typer's ``ctx.obj``): ``exits``, whether the process ends
    right after the command without the interpreter's teardown (:func:`entry`), so that nothing need be released
    before."""

    exits: bool = False


def main(argv: list[str] | None = None, exits: bool = False) -> int:
    """Entry point: run the Typer app and map yolokit errors to exit codes. ``exits``: the process ends right after,
    by :func:`exit_now` (:func:`entry`; not a program or a test calling this)."""
    from toolkit.io.decode import quiet_decoders

    quiet_decoders()  # this process is the CLI's: failures are reported by yolokit, one line each
    try:
        args = _classes_joined(list(argv) if argv is not None else sys.argv[1:])
        rc = app(args=args, standalone_mode=False, obj=Invocation(exits), prog_name="yolokit")
    except YolokitError as e:
        err(str(e))
        return e.exit_code
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except KeyboardInterrupt:
        err("interrupted")
        return 130
    except Exception as e:
        # usage errors from the command-line parser (click, vendored by recent typer): shown, exit code 2
        if callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int):
            if str(e.format_message()).strip():  # type: ignore[attr-defined]  # none after a bare `yolokit`'s help
                typer.echo(usage_line(e, argv if argv is not None else sys.argv[1:]), err=True)
            return 2
        if type(e).__name__ == "Abort":
            err("aborted")
            return 130
        raise
    return rc if isinstance(rc, int) else 0


def _classes_joined(argv: list[str]) -> list[str]:
    """``argv`` with every ``--classes`` given into one (``--classes 0 --classes 2`` is ``--classes 0,2``): the
    parser kept the last alone, class 0's boxes dropped without a word."""
    values, out, tail, i = [], [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # what follows is arguments, not options: the joined option goes before it
            tail = argv[i:]
            break
        if arg == "--classes" and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--classes="):
            values.append(arg.split("=", 1)[1])
        else:
            out.append(arg)
        i += 1
    if len(values) < 2:
        return argv
    return [*out, "--classes", ",".join(values), *tail]


def usage_line(e: Exception, argv: list[str]) -> str:
    """A command-line parser's refusal (click's usage error: four lines, "Usage: ... Try ... Error: ...") as one line
    naming the command, what is wrong and where the help is, with the fix for the slips users of detect.py make.
    ``argv`` names the command where the refusal does not (an option missing its value)."""
    ctx = getattr(e, "ctx", None)
    command = getattr(ctx, "command_path", "") or (f"yolokit {argv[0]}" if argv and argv[0].isidentifier()
                                                   else "yolokit")
    message = str(e.format_message()).rstrip(".")  # type: ignore[attr-defined]
    extra = re.search(r"unexpected extra argument(?:s|\(s\))? \(([^)]*)\)", message)
    if extra and "--classes" in argv and all(v.isdigit() for v in extra.group(1).split()):
        message += "; --classes takes its class ids as one list: --classes 0,2 (not detect.py's --classes 0 2)"
    elif "unexpected extra argument" in message and command.endswith(" run"):
        message += ("; give one SOURCE (a folder, a .txt list, or a glob in quotes, 'photos/*.jpg', which the shell "
                    "otherwise expands into many names)")
    if re.search(r"No such option: --source(?= |$)", message):
        message = "SOURCE is an argument, not an option (detect.py's --source): yolokit run photos/"
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    message = message.replace(". Did you mean", "; did you mean")  # a misspelt command, with the nearest one
    return f"{command}: {message}" + (" See" if message.endswith("?") else "; see") + f" '{command} --help'"


def entry() -> None:
    """The ``yolokit`` command (and ``python -m toolkit.cli``): :func:`main`, then exit with its code
    (:func:`exit_now`). After an interrupted run (130) the summary and every output are already written and the
    workers stopped; the process ends at once, so a Ctrl-C that arrives again while the interpreter shuts down
    cannot turn the exit code into a death by SIGINT (seen once in a full test run as -2 instead of 130)."""
    terminated = _stop_on_sigterm()
    with decoder_lines_dropped():
        try:
            rc = main(exits=True)
        except Exception:  # a bug: its traceback and exit 1, as Python gives them, without the teardown (a model
            traceback.print_exc()  # may still be being released: exit_now does not wait for it, teardown would)
            rc = 1
    if rc == 130:
        _flush()
        os._exit(143 if terminated else 130)
    exit_now(rc)


def _stop_on_sigterm() -> list[int]:
    """SIGTERM (``timeout``, ``docker stop``, Kubernetes, systemd) ends a command as Ctrl-C does: what was done is
    written and the summary printed; exit 143 instead of 130. It killed a run with no summary at all. ``yolokit
    serve`` installs its own handlers (it drains). The list it returns gets the signal's number when one came."""
    import signal

    got: list[int] = []

    def stop(signum: int, _frame: Any) -> None:
        got.append(signum)
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError, OSError):  # not the main thread, or a platform without it
        signal.signal(signal.SIGTERM, stop)
    return got


# what the image decoders inside OpenCV print on their own for a damaged file, beside the failure (or the grey patch
# of a damaged JPEG, decoded as far as it goes, as YOLOv5 decodes it) that yolokit reports in its own words
DECODER_NOISE = re.compile(rb"(libpng (warning|error)|Corrupt JPEG data|Premature end of JPEG file|Invalid SOS "
                           rb"parameters|Warning: unknown JFIF|Unsupported marker type|Bogus (marker|Huffman|DQT|DHT)"
                           rb"|Invalid JPEG file structure|(Huffman|Quantization) table 0x)")


# the filter: a Python of its own (no site, no environment), so that it needs no lock of this process: a thread here
# waits for the GIL, and native code that writes much while holding it would wait for the thread
_FILTER = ("import re, sys\nnoise = re.compile({pattern!r})\nfor line in sys.stdin.buffer:\n"
           "    if not noise.match(line.lstrip()):\n        sys.stdout.buffer.write(line)\n"
           "        sys.stdout.buffer.flush()\n")


@contextlib.contextmanager
def decoder_lines_dropped() -> Iterator[None]:
    """For the ``yolokit`` process: what native code writes to file descriptor 2 (libpng's and libjpeg's own lines
    on a damaged image: ``Corrupt JPEG data: 721 extraneous bytes before marker 0xd9``) goes through a pipe to a
    small filter process that drops those lines and passes every other one on, while Python's own stderr (errors,
    tracebacks, the progress bar) writes to the terminal directly, as before. The filter runs in a session of its
    own (a Ctrl-C does not stop it before it has passed on what was written) and ends when the last writer closes
    the pipe (child processes included), so nothing waits for it and a crash's last words still pass. Where it cannot
    be started, nothing changes."""
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        read_end, write_end = os.pipe()
        code = _FILTER.format(pattern=DECODER_NOISE.pattern)
        os.posix_spawn(sys.executable, [sys.executable, "-S", "-E", "-c", code], os.environ,
                       file_actions=[(os.POSIX_SPAWN_DUP2, read_end, 0), (os.POSIX_SPAWN_DUP2, real, 1),
                                     (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)],
                       setsid=True)
        os.close(read_end)
    except (OSError, AttributeError, NotImplementedError):  # no posix_spawn (Windows), or it failed: as it was
        os.close(real)
        yield
        return
    python_stderr = sys.stderr
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(real, "w", buffering=1, encoding=getattr(python_stderr, "encoding", None) or "utf-8",  # noqa: SIM115
                      errors="backslashreplace", closefd=False)  # the command's stderr until it ends
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(real, 2)  # this process's end of the pipe closes: the filter ends once its other writers have
        sys.stderr = python_stderr


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed pipe must not change the exit code
            stream.flush()


def exit_now(rc: int) -> None:
    """End the command with ``rc`` once everything Python's own shutdown does has been done (other threads joined,
    the executors' and ``atexit`` handlers run, stdout and stderr flushed), without the interpreter's final teardown:
    unloading OpenVINO's plugins and the runtimes' libraries took 0.08-0.12 s after the last output of every command
    (5 % of a 100-image run); nothing of yolokit's is left to write by then. Where this Python lacks the hook that
    joins the threads, the ordinary exit."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls first when it exits
    if shutdown is None or threading.current_thread() is not threading.main_thread():
        sys.exit(rc)
    try:
        shutdown()
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(rc)
