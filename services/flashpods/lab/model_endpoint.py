"""Lab only: a scripted stand-in for the Anthropic model service (the one remote service
the lab cannot reach), serving the part of the Messages API the Claude Code CLI uses.

It runs in the lab's `internet` namespace. Every `POST /v1/messages` must carry the
`x-api-key` the token service hands out (the secrets file's `anthropic_api_key`, read
once at start, so a key rotated in the file afterwards is refused like a wrong one).
The conversation is fixed; which turn to answer follows from the number of tool
results the CLI sent back (facts: shared design agent.md):

1. ask to `Write` AGENT_NOTES.md in the job's /work (absolute, as the tool wants),
2. ask to run a `Bash` command that uses that file,
3. end with a text summary (`stop_reason: end_turn`).

Streaming requests get Server-Sent Events, others plain JSON. `HEAD /` (the CLI's
warm-up) is answered without a key.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("flashpods.lab.model")

WORK_DIR = "/work"
NOTES_NAME = "AGENT_NOTES.md"
NOTES_TEXT = "# Agent notes\n\nWritten by Claude Code with its Write tool in a Flashpods job.\n"
BASH_COMMAND = "wc -l < AGENT_NOTES.md > AGENT_NOTES.lines && cat AGENT_NOTES.lines"
SUMMARY = "Summary: wrote AGENT_NOTES.md and counted its lines into AGENT_NOTES.lines."
MAX_BODY = 8 * 1024 * 1024


@dataclass(frozen=True)
class Turn:
    """One scripted assistant message: content blocks and why it stops."""

    content: tuple[dict[str, Any], ...]
    stop_reason: str


def _tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results = []
    for message in messages:
        content = message.get("content")
        if message.get("role") == "user" and isinstance(content, list):
            results += [
                b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"
            ]
    return results


def _result_text(block: dict[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, list):
        return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
    return str(content)


def next_turn(messages: list[dict[str, Any]], work_dir: str = WORK_DIR) -> Turn:
    """The scripted answer to a conversation so far (pure)."""
    results = _tool_results(messages)
    failed = [r for r in results if r.get("is_error")]
    if failed:
        text = f"A tool call failed: {_result_text(failed[0])[:500]}"
        return Turn(({"type": "text", "text": text},), "end_turn")
    if len(results) == 0:
        tool = {
            "name": "Write",
            "input": {"file_path": f"{work_dir}/{NOTES_NAME}", "content": NOTES_TEXT},
        }
        return Turn(({"type": "tool_use", "id": "toolu_write", **tool},), "tool_use")
    if len(results) == 1:
        tool = {"name": "Bash", "input": {"command": BASH_COMMAND, "description": "Count lines"}}
        return Turn(({"type": "tool_use", "id": "toolu_bash", **tool},), "tool_use")
    return Turn(({"type": "text", "text": SUMMARY},), "end_turn")


def _message(turn: Turn, model: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "msg_flashpods_lab",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": turn.stop_reason if content else None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }


def sse_events(turn: Turn, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The streaming form of a turn: (event name, data) per Server-Sent Event."""
    yield "message_start", {"type": "message_start", "message": _message(turn, model, [])}
    for index, block in enumerate(turn.content):
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": start,
            },
        )
        yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": turn.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": 1},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


class ModelHandler(BaseHTTPRequestHandler):
    server_version = "flashpods-lab-model/1"
    # Set on the subclass the server is built with.
    api_key: str = ""
    work_dir: str = WORK_DIR

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/v1/messages":
            self._json(404, _error("not_found_error", f"no such endpoint: {self.path}"))
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY))
        if self.headers.get("x-api-key") != self.api_key:
            log.warning("refused a request: wrong or missing x-api-key")
            self._json(401, _error("authentication_error", "invalid x-api-key"))
            return
        try:
            request = json.loads(body)
            messages = request["messages"]
        except (ValueError, KeyError, TypeError):
            self._json(400, _error("invalid_request_error", "expected a JSON body with messages"))
            return
        turn = next_turn(messages, self.work_dir)
        model = str(request.get("model", "claude"))
        log.info("turn %d: %s", len(_tool_results(messages)), turn.stop_reason)
        if not request.get("stream"):
            self._json(200, _message(turn, model, list(turn.content)))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for event, data in sse_events(turn, model):
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()
        self.close_connection = True


def serve(bind: str, port: int, api_key: str, work_dir: str = WORK_DIR) -> ThreadingHTTPServer:
    handler = type("BoundModelHandler", (ModelHandler,), {"api_key": api_key, "work_dir": work_dir})
    return ThreadingHTTPServer((bind, port), handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secrets-file", type=Path, required=True)
    parser.add_argument("--work-dir", default=WORK_DIR, help="the agent's working directory")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    api_key = json.loads(args.secrets_file.read_text())["anthropic_api_key"]
    server = serve(args.bind, args.port, api_key, args.work_dir)
    log.info("scripted model endpoint on http://%s:%d", args.bind, args.port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
