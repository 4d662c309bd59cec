"""Errors that reach the user as one line.

`UpsrError` and its subclasses carry a message written for the person at the terminal; the CLI
prints it as ``upsr: error: <message>`` and exits non-zero, never with a traceback.
"""

from __future__ import annotations


class UpsrError(Exception):
    """A failure the user can act on; the message is one line, without a traceback."""


class UsageError(UpsrError):
    """Bad arguments or set-up, found before any work starts (exit 1)."""


class AudioError(UpsrError):
    """One input could not be read, or holds unusable audio (the batch goes on; exit 2)."""


class CheckpointError(UpsrError):
    """A checkpoint is missing, corrupt, of the wrong system, or has unknown/missing keys."""
