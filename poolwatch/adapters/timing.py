"""Small timing records the adapters share."""

from __future__ import annotations

__all__ = ["ConnectTime"]


class ConnectTime:
    """Time inside the current acquire that was spent opening a new connection.

    An adapter puts one in a context variable for the length of an acquire; whatever
    opens a connection inside it adds its duration, so the acquire can report that part
    as creation time and leave it out of the wait.
    """

    __slots__ = ("connecting",)

    def __init__(self) -> None:
        self.connecting = 0.0
