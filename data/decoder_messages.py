"""What a C decoder prints about a track, collected for the track's report instead of the terminal.

libmpg123 (inside libsndfile) writes its warnings ("Illegal Audio-MPEG-Header", "Xing stream size off") with
fprintf(stderr): straight to file descriptor 2, from whichever thread decodes. fd 2 belongs to the whole process,
so an mp3 is decoded with fd 2 pointed at a temporary file under one lock (`fd2_captured`), and for the length of
a build Python's own stderr writers use a duplicate of fd 2 (`python_stderr_off_fd2`): progress bars, warnings and
log lines from any thread keep reaching the terminal and never land in a track's capture.
"""

import logging
import os
import sys
import tempfile
import threading
from contextlib import contextmanager

MAX_LINES = 20  # a badly damaged file can make the decoder resync thousands of times
_FD2_LOCK = threading.Lock()


@contextmanager
def fd2_captured(lines):
    """Append to `lines` what is written to fd 2 inside the block, instead of letting it reach the terminal. fd 2 is
    restored on the way out, also when an interrupt (KeyboardInterrupt, SIGTERM in the CLIs) stops the block."""
    with _FD2_LOCK, tempfile.TemporaryFile() as capture:
        terminal = os.dup(2)
        try:
            os.dup2(capture.fileno(), 2)
            yield
        finally:
            os.dup2(terminal, 2)
            os.close(terminal)
            capture.seek(0)
            captured = [line for line in capture.read().decode(errors="replace").splitlines() if line.strip()]
            lines.extend(captured[:MAX_LINES])
            if len(captured) > MAX_LINES:
                lines.append(f"... and {len(captured) - MAX_LINES} more lines")


@contextmanager
def python_stderr_off_fd2():
    """For the block, point sys.stderr and the logging handlers that write to it at a duplicate of fd 2, so that
    what Python prints keeps reaching the terminal while fd 2 is captured. A stderr that is not fd 2 already (pytest's
    capture, a notebook) is left as it is."""
    original = sys.stderr
    if not _is_fd2(original):
        yield
        return
    original.flush()
    duplicate = open(os.dup(2), "w", buffering=1, encoding=original.encoding, errors=original.errors)
    handlers = [handler for handler in _stream_handlers() if handler.stream is original]
    # sys.stderr first, each way: a handler that follows sys.stderr (logging's last resort) then has nothing to set
    sys.stderr = duplicate
    for handler in handlers:
        handler.setStream(duplicate)
    try:
        yield
    finally:
        os.dup2(duplicate.fileno(), 2)  # once more: a second Ctrl-C can cut short a decode's own restore of fd 2
        sys.stderr = original
        for handler in handlers:
            handler.setStream(original)
        duplicate.close()


def _is_fd2(stream):
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # None, or a stream with no descriptor
        return False


def _stream_handlers():
    """Every StreamHandler attached to a logger (transformers' keeps the sys.stderr it found at import)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = {handler for logger in loggers for handler in getattr(logger, "handlers", [])}
    return [handler for handler in handlers if isinstance(handler, logging.StreamHandler)]
