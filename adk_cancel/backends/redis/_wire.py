"""What travels through Redis: run entries, cancel requests and their replies, as JSON.

pydantic writes and reads the JSON, except for one case: its writer refuses a ``str`` holding
a lone surrogate (a client can send ``"\\ud800"`` in a JSON body, and Python keeps it), and its
reader refuses the ``\\ud800`` escape. Such a value is written as ASCII JSON by ``json.dumps``
and read back through ``json.loads``, so one odd id never keeps a write from happening.
Everything else is the same JSON as before, so workers of older versions interoperate.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, Field, TypeAdapter
from pydantic_core import PydanticSerializationError

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


_T = TypeVar("_T")

_RUN: TypeAdapter[RunInfo] = TypeAdapter(RunInfo)
_MESSAGE: TypeAdapter[CancelMessage | ReplyMessage] = TypeAdapter(
    Annotated[CancelMessage | ReplyMessage, Field(discriminator="type")]
)


def dump(model: BaseModel) -> str:
    """``model`` as JSON; cannot fail on any ``str`` field."""
    try:
        return model.model_dump_json()
    except PydanticSerializationError:
        return json.dumps(model.model_dump(mode="json"), separators=(",", ":"))


def parse_message(data: str | bytes) -> CancelMessage | ReplyMessage:
    """Raises ``ValueError`` for anything that is not one of our messages (anyone with access
    to Redis can publish on a channel)."""
    return _parse(_MESSAGE, data)


def parse_run(value: str) -> RunInfo:
    """Raises ``ValueError`` for anything that is not a run entry."""
    return _parse(_RUN, value)


def _parse(adapter: TypeAdapter[_T], data: str | bytes) -> _T:
    try:
        return adapter.validate_json(data)
    except ValueError:
        pass  # junk, or an escaped lone surrogate that only json.loads takes
    try:
        return adapter.validate_python(json.loads(data))
    except RecursionError as exc:  # deeply nested junk
        raise ValueError("JSON nested too deeply") from exc
