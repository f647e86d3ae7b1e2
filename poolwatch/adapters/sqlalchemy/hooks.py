"""What every hook of the SQLAlchemy adapter shares with the instrumentation that made it.

The wrappers and listeners are made by factories in :mod:`.statements`,
:mod:`.transactions` and :mod:`.pool`; :class:`~.instrumentation.SQLAlchemyInstrumentation`
installs them and hands itself in as the :class:`Switch` they read on every call.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["COMPONENT", "Switch"]

COMPONENT = "sqlalchemy"  # what this adapter's faults are counted as


class Switch(Protocol):
    """The instrumentation that made a hook, as the hook sees it.

    ``_active`` is read as a plain attribute on every call (no function call on the hot
    path). It turns false at uninstall: a wrapper that someone else wrapped in turn cannot
    be removed, and stays as a pass-through.
    """

    _active: bool
