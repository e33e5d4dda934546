"""The launcher's one error type."""
from __future__ import annotations


class LaunchError(ValueError):
    """A bad launcher flag, profile or environment; the message is one line."""
