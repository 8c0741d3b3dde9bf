"""``redis://``: share runs and cancels between server processes through Redis.

Every process announces its runs in Redis with a TTL, lists the runs other processes hold of
a session, and sends cancels to their holders over pub/sub; see ``RedisBackend``. One concern
per module:

- ``.._url``: the options, as keywords or URL query parameters, and the redacted URL;
- ``_keys``: the key layout, and the encoding that makes any id safe in a key;
- ``_wire``: the JSON written to Redis (run entries, cancel requests, replies);
- ``_link``: the connection's life (one state), the reader, reconnects and outages;
- ``_writer``: the write queue and the heartbeat;
- ``_backend``: ``RedisBackend``, listing and cancelling across processes.

Logs go to the ``adk_cancel.backends.redis`` logger.
"""

from ._backend import RedisBackend

__all__ = ["RedisBackend"]
