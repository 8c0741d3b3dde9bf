"""What travels through Redis: run entries, cancel requests and their replies, as JSON."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from ..._models import CancelledRun, RunInfo
from ..._order import CancelOrder


class CancelMessage(BaseModel):
    """Sent on a holder's channel: cancel your runs that the order is for."""

    type: Literal["cancel"] = "cancel"
    request_id: str
    reply_to: str
    order: CancelOrder


class ReplyMessage(BaseModel):
    """Sent back on the requester's channel: the holder's outcome, or why it failed."""

    type: Literal["reply"] = "reply"
    request_id: str
    node: str
    runs: list[CancelledRun] = Field(default_factory=list)
    error: str | None = None


_RUN: TypeAdapter[RunInfo] = TypeAdapter(RunInfo)
_MESSAGE: TypeAdapter[CancelMessage | ReplyMessage] = TypeAdapter(
    Annotated[CancelMessage | ReplyMessage, Field(discriminator="type")]
)


def dump(model: BaseModel) -> str:
    return model.model_dump_json()


def parse_message(data: str | bytes) -> CancelMessage | ReplyMessage:
    """Raises ``ValueError`` for anything that is not one of our messages (anyone with access
    to Redis can publish on a channel)."""
    return _MESSAGE.validate_json(data)


def parse_run(value: str) -> RunInfo:
    """Raises ``ValueError`` for anything that is not a run entry."""
    return _RUN.validate_json(value)
