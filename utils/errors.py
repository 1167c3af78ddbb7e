"""User-facing errors: one line, non-zero exit, no traceback."""
import errno
import os
import sys


class UserError(Exception):
    """A problem with the user's input that names the problem and the fix."""


EXIT_USER_ERROR = 2
LOCATION_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
                   errno.ENAMETOOLONG}


def run_cli(main, argv=None):
    """Run `main(argv)`; a tool stopped by a preemption signal after saving its state (utils/preempt.py) exits with
    code 75; a UserError, or an output location that fails (full disk, read-only, a file in the way),
    becomes one line on stderr and exit code 2."""
    from utils.preempt import EXIT_PREEMPTED, Preempted
    try:
        main(argv)
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except UserError as e:
        msg = " ".join(str(e).split("\n"))
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as e:  # the place an output goes: full disk, read-only, a file where a folder should be
        if e.errno not in LOCATION_ERRNOS:
            raise
        fix = "free space or choose another disk" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
            "choose another location"
        print(f"error: {e.strerror or 'cannot write'}: {e.filename or '?'}; {fix}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
