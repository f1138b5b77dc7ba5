"""Runtimes that execute exported artifacts, registered by name and imported only when used."""

from edgekd.runtime.api import (
    RUNTIMES,
    Session,
    evaluate_session,
    list_runtimes,
    open_session,
    runtime_for,
)

__all__ = ["RUNTIMES", "Session", "evaluate_session", "list_runtimes", "open_session", "runtime_for"]
