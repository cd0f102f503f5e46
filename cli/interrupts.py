"""SIGTERM handled like Ctrl-C, so that a job scheduler's stop runs the same clean-up and message as a user's."""

import signal


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def treat_sigterm_as_interrupt() -> None:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
