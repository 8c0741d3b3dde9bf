"""Run a real API server with the chat page for the browser tests.

Usage: ``python tests/browser/_serve.py PORT [plain]``. Serves ``samples/`` (the slow sample
agent) through ``adk_cancel.get_fast_api_app(..., chat=True)`` on 127.0.0.1:PORT, or with
``plain`` through ADK's own ``get_fast_api_app`` plus ``add_chat_route`` (no cancellation).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn

from adk_cancel import get_fast_api_app
from adk_cancel.chat import add_chat_route

AGENTS_DIR = Path(__file__).resolve().parents[2] / "samples"


def main() -> None:
    port = int(sys.argv[1])
    plain = sys.argv[2:] == ["plain"]
    adk_kwargs: dict[str, Any] = dict(
        agents_dir=str(AGENTS_DIR),
        web=False,
        session_service_uri="memory://",
        artifact_service_uri="memory://",
        memory_service_uri="memory://",
        use_local_storage=False,
        host="127.0.0.1",
        port=port,
    )
    if plain:  # ADK alone plus the page: no :cancel route, Stop can only drop the stream
        from google.adk.cli.fast_api import get_fast_api_app as adk_get_fast_api_app

        app = adk_get_fast_api_app(**adk_kwargs)
        add_chat_route(app)
    else:
        app = get_fast_api_app(chat=True, **adk_kwargs)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
