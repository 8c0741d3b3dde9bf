"""``memory://``: one process, nothing to connect to."""

from __future__ import annotations

from .._models import CancelledRun, RunInfo, SessionKey
from .._order import CancelOrder
from .._stream import StreamPage, StreamWrite
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

    def publish_events(self, write: StreamWrite) -> None:
        return None  # no other process to tell: the local log is the only one

    async def read_events(
        self, key: SessionKey, run_id: str, after: int, wait_s: float
    ) -> StreamPage | None:
        return None

    async def list_user_remote(self, app_name: str, user_id: str) -> list[RunInfo]:
        return []

    def save_record(self, record: RunInfo, keep: int, ttl_s: float) -> None:
        return None  # the registry keeps this process's records; there is no other process

    async def list_records(self, key: SessionKey, limit: int) -> list[RunInfo]:
        return []
