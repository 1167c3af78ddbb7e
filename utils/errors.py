"""User-facing errors: one line, non-zero exit, no traceback."""
import os
import sys


class UserError(Exception):
    """A problem with the user's input that names the problem and the fix."""


EXIT_USER_ERROR = 2


def run_cli(main, argv=None):
    """Run `main(argv)`; a UserError becomes one line on stderr and exit code 2."""
    try:
        main(argv)
    except UserError as e:
        msg = " ".join(str(e).split("\n"))
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
