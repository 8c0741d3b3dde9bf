"""What a model adapter needs of ADK beyond ``BaseLlm``'s documented methods.

- Capabilities: ``BaseLlm.capabilities`` returns ``LlmCapabilities``, a class in a private
  module; a model changes the fields it knows as ADK's docstring shows (build on what the
  parent reports), so nothing private is imported at run time.
- Live connections: ``BaseLlmConnection``'s abstract methods (``send_context_update`` is
  abstract since 2.15; a subclass defines it for older ADKs too, where it is never called).

Checked on google-adk 2.13.0, 2.14.1, 2.15.0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.adk.models.base_llm_connection import BaseLlmConnection

if TYPE_CHECKING:
    from google.adk.models._capabilities import LlmCapabilities as LlmCapabilities

__all__ = ["BaseLlmConnection", "with_capabilities"]


def with_capabilities(base: LlmCapabilities, **changes: Any) -> LlmCapabilities:
    """``base`` (what ``BaseLlm`` reports) with the fields in ``changes`` replaced, those this
    ADK's ``LlmCapabilities`` knows: a field an older ADK lacks is left out, not an error."""
    cls = type(base)
    fields = getattr(cls, "model_fields", {})
    known = {name: value for name, value in changes.items() if name in fields}
    return cls(**(base.model_dump() | known))
