"""The `srgan-sqe` command line: one module per subcommand, loaded only when used.

Each subcommand module defines `add_arguments(parser)` and `run(args) -> int`.
Errors meant for people (bad files, bad options) are printed as one line on stderr
with exit status 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from napari_srgan_sqe import __version__
from napari_srgan_sqe.errors import UserFacingError

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "view": ("napari_srgan_sqe.cli.view", "open napari with a slide (default: the bundled sample)"),
    "enhance": (
        "napari_srgan_sqe.cli.enhance",
        "super-resolve a slide to a pyramidal OME-Zarr / OME-TIFF",
    ),
    "evaluate": (
        "napari_srgan_sqe.cli.evaluate",
        "measure a model against bicubic on held-out images",
    ),
    "train": ("napari_srgan_sqe.cli.train", "train a model from a config file"),
    "finetune": ("napari_srgan_sqe.cli.finetune", "adapt a model to regions of a slide"),
    "zero-shot": (
        "napari_srgan_sqe.cli.zero_shot",
        "train ZSSR on regions of a slide from its LR alone",
    ),
    "bench": ("napari_srgan_sqe.cli.bench", "measure model and pipeline throughput"),
    "models": ("napari_srgan_sqe.cli.models", "list bundled models or describe a model file"),
    "experiment": ("napari_srgan_sqe.cli.experiment", "run the robustness experiment"),
}


class UserError(UserFacingError):
    """An error caused by the user's input, found by the command line itself."""


def parse_region(text: str) -> tuple[int, int, int, int]:
    """'x,y,w,h' (level-0 px; spaces allowed) -> four ints; an argparse type."""
    parts = [p.strip() for p in text.split(",")]
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"region {text!r} must be four integers x,y,w,h (level-0 pixels)"
        ) from None
    return x, y, w, h


SAMPLE_WORD = "sample"
SAMPLE_HELP = (
    "'sample' names the bundled sample slide (CMU-1-Small-Region.svs) unless a file or "
    "folder of that name is in the current folder"
)
"""The words every slide argument's help ends with (`slide_path`)."""


def slide_path(text: str) -> Path:
    """A slide or image argument as a path; an argparse type, used by every command
    that reads a slide. The word 'sample' names the bundled sample slide, unless a file
    or folder called `sample` is in the current folder: that is then what is meant."""
    path = Path(text)
    if text != SAMPLE_WORD or path.exists() or path.is_symlink():
        return path
    from napari_srgan_sqe.io.sample import sample_slide_path

    try:
        return sample_slide_path()
    except FileNotFoundError as exc:
        raise argparse.ArgumentTypeError(
            f"'{SAMPLE_WORD}' names the bundled sample slide, but it is not installed "
            f"({exc.filename})"
        ) from None


def is_sample(path: Path | None) -> bool:
    """True when `path` is the bundled sample slide (named or found by `slide_path`)."""
    from napari_srgan_sqe.io.sample import sample_slide_path

    if path is None:
        return False
    try:
        return path.expanduser().resolve() == sample_slide_path().resolve()
    except (OSError, RuntimeError):  # a missing sample, a symbolic-link loop
        return False


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srgan-sqe",
        description="Robust 4x super-resolution of H&E whole-slide images (SRGAN_SQE).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
    return parser


def parse_command(name: str, argv: Sequence[str]) -> tuple[Any, argparse.Namespace]:
    """The module of command `name` and its parsed arguments `argv` (argparse exits
    with status 2 and one line on what it cannot parse)."""
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"srgan-sqe {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(sub)
    return module, sub.parse_args(_attach_negative_values(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser()
    # Parse the command name first, then let only that module add its options, so
    # `srgan-sqe --help` never imports torch.
    known, _ = parser.parse_known_args(argv[:1] if argv and not argv[0].startswith("-") else argv)
    if getattr(known, "command", None) is None:
        parser.parse_args(argv)  # handles --help / --version / errors
        parser.print_help()
        return 2
    name = known.command
    module, args = parse_command(name, argv[1:])
    try:
        check_numeric_options(args)
    except UserError as exc:
        print(f"srgan-sqe {name}: error: {exc}", file=sys.stderr)
        return 2
    # the viewer's Qt event loop has its own way to end (its window closed)
    previous = _terminate_like_ctrl_c() if name != "view" else None
    try:
        return int(module.run(args) or 0)
    except _Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # errors meant for people get one clear line
        if _is_user_error(exc):
            print(f"srgan-sqe {name}: error: {exc}", file=sys.stderr)
            return 2
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


# The range of every numeric option, whichever command has it (--data-workers and
# --tile keep their own range checks): (lowest, highest,
# whether the lowest is excluded). One table, so a new command's options are checked
# the same way; a value outside it is one line of error, never a traceback.
NUMERIC_OPTIONS: dict[str, tuple[float, float, bool]] = {
    "seed": (0, 2**32 - 1, False),
    "threads": (1, 256, False),
    "steps": (1, 10_000_000, False),
    "max_steps": (1, 10_000_000, False),
    "zero_shot_steps": (1, 10_000_000, False),
    "samples": (1, 10_000, False),
    "batch": (1, 4096, False),
    "minutes": (0, 525_600, True),
    "seconds": (0, 86_400, True),
    "mpp": (0, 1000, True),
}


def check_numeric_options(args: argparse.Namespace) -> None:
    """UserError naming the option when a numeric option is out of its range or not a
    finite number (`NUMERIC_OPTIONS`)."""
    for dest, (low, high, exclusive) in NUMERIC_OPTIONS.items():
        value = getattr(args, dest, None)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        flag = "--" + dest.replace("_", "-")
        if not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
        if exclusive and value <= low:
            raise UserError(f"{flag} must be above {low:g}, got {value:g}")
        if value < low:
            raise UserError(f"{flag} must be at least {low:g}, got {value:g}")
        if value > high:
            raise UserError(f"{flag} must be at most {high:g}, got {value:g}")


_NUMBERS = re.compile(r"^-\d[\d.]*(,-?[\d.]+)+$")


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--region -10,0,64,64` as `--region=-10,0,64,64`: argparse takes a value that
    starts with '-' for an option, and the user would read "expected one argument"
    instead of why the region is refused."""
    out: list[str] = []
    for tok in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NUMBERS.match(tok):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM (which batch schedulers send) set `stop`
    instead of interrupting: the command stops between two steps and keeps its state.
    Yields the list the signals received are appended to; the previous handlers are
    back afterwards. Outside the main thread nothing is installed."""
    received: list[int] = []

    def _request_stop(signum: int, frame: Any) -> None:  # noqa: ARG001
        received.append(signum)
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _request_stop)
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a batch system's time limit), raised where Ctrl-C's
    KeyboardInterrupt would be, so that it unwinds the same way: partial files removed
    or kept to resume, locks released, the same message."""


def _terminate_like_ctrl_c() -> Any:
    """Make SIGTERM raise `_Terminated` in the main thread for the command's run (train
    and finetune install their own, gentler handlers; `view` none: an exception inside
    Qt's event loop would abort it); returns the previous handler, or None where
    signals cannot be set (not the main thread)."""

    def _raise(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise _Terminated

    try:
        return signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread
        return None


def _is_user_error(exc: BaseException) -> bool:
    """Whether `exc` is meant for people (`errors.UserFacingError`): printed as one line,
    exit status 2; anything else is a bug and keeps its traceback."""
    return isinstance(exc, UserFacingError)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
