"""Errors a user can fix, printed as one line that names the problem and the fix."""

from __future__ import annotations

import functools
import sys


class UsageError(Exception):
    """Bad input (recipe, token, network, sample): the message names the cause and the fix."""


def one_line_errors(main):
    """Turn a UsageError into `error: <message>` on stderr and exit status 2, with no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper


def network_errors() -> tuple[type[BaseException], ...]:
    """What the Hub clients raise when the network, not the request, failed."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx", "httpx2"):
        try:
            errors.append(__import__(module).TransportError)
        except ImportError:
            pass
    return tuple(errors)
