"""Where the backend keeps things in Redis (prefix ``adk-cancel`` by default).

- ``{prefix}:node:{node}``: string with a TTL; the process is alive. Refreshed every TTL/3.
- ``{prefix}:runs:{app}/{user}/{session}``: hash ``{node}/{run_id}`` -> ``RunInfo`` JSON, with
  the same TTL refreshed by the holders. One HGETALL plus one MGET of the holders' node keys
  lists a session; entries of a node whose key has expired (a crashed process) are skipped
  and pruned.
- ``{prefix}:user:{app}/{user}``: hash ``{node}/{run_id}`` -> ``RunInfo`` JSON, the same
  entries as the session hashes, by user: what a user-wide cancel reads. Same TTL.
- ``{prefix}:records:{app}/{user}/{session}``: list of the session's run records (``RunInfo``
  JSON, newest first), trimmed to ``run_records_per_session`` and expiring
  ``run_records_ttl_s`` after the last one was written.
- ``{prefix}:chan:{node}``: the pub/sub channel of one process. Cancel requests for its runs
  arrive there, and so do the replies to the cancels it sent (matched by request id).

Every id is percent-encoded from its UTF-8 bytes, lone surrogates included: a client may send
``"\\ud800"`` in a JSON body, and Python keeps it in a ``str`` that strict UTF-8 refuses. So any
``str`` gives a plain-ASCII key, and no two ids give the same one (``/`` and ``:`` are encoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

from ..._models import SessionKey


def encode(part: str) -> str:
    """``part`` as ASCII that never contains ``/`` or ``:``; cannot fail for any ``str``."""
    return quote(part.encode("utf-8", "surrogatepass"), safe="")


def decode(part: str) -> str | None:
    """The id ``encode`` made ``part`` from; None when no id gives ``part`` (junk in Redis)."""
    try:
        return unquote(part, errors="surrogatepass")
    except UnicodeDecodeError:
        return None


def show(key: SessionKey) -> str:
    """A session for a log line: ASCII, so a log handler cannot choke on it."""
    return "/".join(encode(part) for part in key)


@dataclass(frozen=True)
class KeyLayout:
    """The names of one deployment's keys and channels (one ``key_prefix``)."""

    prefix: str

    def node(self, node_id: str) -> str:
        return f"{self.prefix}:node:{encode(node_id)}"

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}:chan:{encode(node_id)}"

    def runs(self, key: SessionKey) -> str:
        return f"{self.prefix}:runs:{show(key)}"

    def user_runs(self, app_name: str, user_id: str) -> str:
        return f"{self.prefix}:user:{encode(app_name)}/{encode(user_id)}"

    def records(self, key: SessionKey) -> str:
        return f"{self.prefix}:records:{show(key)}"

    def run_field(self, node_id: str, run_id: str) -> str:
        return f"{encode(node_id)}/{encode(run_id)}"

    @staticmethod
    def node_of(run_field: str) -> str | None:
        """The node a field of a runs hash belongs to; None for a field we did not write."""
        node_part, sep, _ = run_field.partition("/")
        return decode(node_part) if sep else None
