"""Errors a user can fix, printed as one line that names the problem and the fix."""

from __future__ import annotations

import errno
import functools
import sys
from pathlib import Path

import yaml


class UsageError(Exception):
    """Bad input (recipe, token, network, sample): the message names the cause and the fix."""


# What the machine, not the code, got wrong when a stage writes: each with the fix.
DISK_ERRORS = {
    errno.EACCES: "make it writable for this user",
    errno.EPERM: "make it writable for this user",
    errno.EROFS: "the file system is read-only: run from a writable folder",
    errno.ENOSPC: "free some disk space",
    errno.EDQUOT: "free some space within your disk quota",
}


def disk_error(exc: OSError) -> UsageError | None:
    """A write refused by the file system, as one line; None for any other OSError."""
    fix = DISK_ERRORS.get(exc.errno)
    if fix is None:
        return None
    return UsageError(f"cannot write {exc.filename or 'the run folder'} ({exc.strerror}): {fix}, then rerun")


def one_line_errors(main):
    """Turn a UsageError (or a write the file system refused) into `error: <message>` on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except OSError as exc:
            usage = disk_error(exc)
            if usage is None:
                raise
            print(f"error: {usage}", file=sys.stderr)
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


def read_yaml(path):
    """A YAML file's content; a syntax error fails in one line naming the line and column (recipes and catalogs)."""
    try:
        # libyaml where installed: the catalog's pools parse in a tenth of the time
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
        raise UsageError(f"{path}: not valid YAML ({where}{problem}); fix the syntax there") from exc
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
