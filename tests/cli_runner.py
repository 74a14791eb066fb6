"""`encvit ARGV` run in the test's own process, as the tests of several modules need it."""

import contextlib
import io

from encvit.cli import main


def run_in_process(*argv) -> tuple[int, str]:
    """`encvit ARGV` in this process: (exit status, stderr); argparse's refusals give their exit status too."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exc:
            status = exc.code
    return status, err.getvalue()
