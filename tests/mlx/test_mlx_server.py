"""The :cancel route of a real adk-cancel server stops an MLX generation within one token.

Uvicorn on loopback, the app from ``adk_cancel.get_fast_api_app``, the tiny model talking
until stopped (tests/mlx/agents/tiny_mlx_agent), httpx as the client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import memory_services, run_body, serve, session_path
from tiny_mlx_agent.agent import TALKING

import adk_cancel
import adk_cancel.mlx as amlx

AGENTS = Path(__file__).resolve().parent / "agents"

pytestmark = pytest.mark.timeout(90)

APP = "tiny_mlx_agent"


@pytest.fixture(scope="module")
def base_url(tiny_model: str) -> Iterator[str]:
    with serve(adk_cancel.get_fast_api_app(agents_dir=str(AGENTS), **memory_services())) as url:
        yield url


async def _session(client: httpx.AsyncClient) -> str:
    response = await client.post(f"/apps/{APP}/users/u/sessions", json={})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


@pytest.mark.parametrize("route", ["run_sse", "run"])
async def test_cancel_route_stops_the_model_within_one_token(base_url: str, route: str) -> None:
    worker = amlx.get_worker()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        sid = await _session(client)
        TALKING.clear()
        body = run_body(sid, "Talk to me.", app=APP, streaming=route == "run_sse")
        run = asyncio.create_task(client.post(f"/{route}", json=body))
        assert await asyncio.to_thread(TALKING.wait, 30), "the model never started talking"
        answer = await client.post(session_path(sid, app=APP) + ":cancel", json={})
        # The route waited for the run to stop, and the run for the model: idle now.
        assert worker.idle.is_set(), (worker.active, worker.pending, list(worker.history)[-2:])
        assert answer.status_code == 200, answer.text
        cancelled: dict[str, Any] = answer.json()
        assert cancelled["status"] == "cancelled" and cancelled["session_id"] == sid
        (stopped,) = cancelled["runs"]
        assert stopped["stopped"] is True and stopped["stopped_by"] == "abort"
        response = await asyncio.wait_for(run, 10)
        assert response.status_code in (200, 499), response.text
        session = (await client.get(session_path(sid, app=APP))).json()

    stats = worker.history[-1]
    assert stats.finish == "cancelled" and stats.generated_tokens >= 15
    assert stats.tokens_after_cancel <= 1, stats
    assert stats.cancel_to_idle_s is not None and stats.cancel_to_idle_s < 0.25
    # ADK sealed the aborted invocation; nothing of the unfinished answer is left dangling.
    assert session["events"][0]["author"] == "user"
    assert all(not e.get("partial") for e in session["events"])


async def test_two_sessions_share_the_model_and_cancel_separately(base_url: str) -> None:
    worker = amlx.get_worker()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        first, second = await _session(client), await _session(client)
        runs = []
        for sid in (first, second):
            TALKING.clear()
            body = run_body(sid, "Talk to me.", app=APP, streaming=True)
            runs.append(asyncio.create_task(client.post("/run_sse", json=body)))
            assert await asyncio.to_thread(TALKING.wait, 30), "the model never started talking"
        answer = await client.post(session_path(first, app=APP) + ":cancel", json={})
        assert answer.status_code == 200, answer.text
        assert [r["stopped_by"] for r in answer.json()["runs"]] == ["abort"]
        stopped = next(s for s in reversed(worker.history) if s.finish == "cancelled")
        # The other one goes on: still decoding, and it shared its steps with the first.
        (going,) = worker.active
        assert going.finish is None and going.decode_batch_max == 2
        produced = going.generated_tokens
        await asyncio.sleep(0.1)
        assert going.generated_tokens > produced
        answer = await client.post(session_path(second, app=APP) + ":cancel", json={})
        assert answer.status_code == 200, answer.text
        for run in runs:
            assert (await asyncio.wait_for(run, 10)).status_code == 200
    # The worker's abort probe and ADK cancelling the model call's task race to stop it.
    assert stopped.stopped_by in ("abort", "cancel") and stopped.tokens_after_cancel <= 1, stopped
    last = worker.history[-1]
    assert last.finish == "cancelled" and last.tokens_after_cancel <= 1, last
    assert worker.idle.is_set()
