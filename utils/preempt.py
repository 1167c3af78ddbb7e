"""Preemption: SIGTERM (a cluster preempting or requeueing the job, scancel) and SIGUSR1 (SLURM's warning before the
time limit, `sbatch --signal`) ask a tool to stop. The handler only sets a flag; each tool's loop looks at it at a
point where its state is consistent, saves that state as it does every `ckpt_every` anyway, and raises Preempted,
which `run_cli` turns into exit code EXIT_PREEMPTED (75, EX_TEMPFAIL: "try again"). Rerunning the same command
(a requeued job does) continues from the saved state exactly, as after kill -9.
"""
import signal
import threading

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised by a tool after it saved its state on a preemption signal."""


class _Flag:
    def __init__(self):
        self.signum = None

    def __call__(self, signum, frame):
        self.signum = signum


_flag = _Flag()


class watch:
    """with watch(): ... — SIGTERM/SIGUSR1 set the flag instead of killing the process; the previous handlers come
    back on exit (the tools also run in-process, e.g. from scripts/demo.py). Off the main thread it does nothing."""

    def __enter__(self):
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            _flag.signum = None
            self.old = {s: signal.signal(s, _flag) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        if self.old:
            _flag.signum = None  # a later in-process call starts clean
        return False


def requested():
    """The signal number asked to stop with, or None."""
    return _flag.signum


def stop(what):
    """Raise Preempted naming the signal and what was saved."""
    name = signal.Signals(_flag.signum).name if _flag.signum else "a signal"
    raise Preempted(f"stopped on {name}: {what}; rerun the same command to continue exactly from there")
