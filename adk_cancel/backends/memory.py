"""``memory://``: one process, nothing to connect to."""

from __future__ import annotations

from .._models import CancelledRun, RunInfo, SessionKey
from .._order import CancelOrder
from ._base import LocalNode
from ._leases import LocalLeases


class MemoryBackend(LocalLeases):
    """The default backend: every run lives in this process, so nothing is remote; its
    session leases are this process's."""

    def __init__(self) -> None:
        super().__init__()
        self.node: LocalNode | None = None

    async def connect(self, node: LocalNode) -> None:
        self.node = node

    async def disconnect(self) -> None:
        self.node = None

    def announce(self, run: RunInfo) -> None:
        return None

    def withdraw(self, run: RunInfo) -> None:
        return None

    async def list_remote(self, key: SessionKey) -> list[RunInfo]:
        return []

    async def cancel_remote(self, order: CancelOrder) -> list[CancelledRun]:
        return []
