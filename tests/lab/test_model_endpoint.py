"""The lab's scripted model service: the conversation it replays and the HTTP it speaks
(the real Claude Code CLI against it: integration/lab/test_lab_agent.py)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flashpods.lab.model_endpoint import NOTES_NAME, NOTES_TEXT, SUMMARY, next_turn, serve

KEY = "sk-ant-lab-test"


def tool_result(tool_id: str, text: str, error: bool = False) -> dict[str, Any]:
    block = {"type": "tool_result", "tool_use_id": tool_id, "content": text, "is_error": error}
    return {"role": "user", "content": [block]}


def test_the_script_writes_then_runs_a_command_then_summarises() -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "a system message the CLI may send"},
        {"role": "user", "content": "do it"},
    ]
    write = next_turn(history, "/work")
    assert write.stop_reason == "tool_use"
    assert write.content[0]["name"] == "Write"
    assert write.content[0]["input"] == {"file_path": f"/work/{NOTES_NAME}", "content": NOTES_TEXT}
    history += [{"role": "assistant", "content": list(write.content)}, tool_result("w", "ok")]
    bash = next_turn(history)
    assert (bash.stop_reason, bash.content[0]["name"]) == ("tool_use", "Bash")
    history += [{"role": "assistant", "content": list(bash.content)}, tool_result("b", "3")]
    done = next_turn(history)
    assert done.stop_reason == "end_turn"
    assert done.content == ({"type": "text", "text": SUMMARY},)


def test_a_failed_tool_call_ends_the_conversation_saying_so() -> None:
    turn = next_turn([{"role": "user", "content": "x"}, tool_result("w", "EACCES", error=True)])
    assert turn.stop_reason == "end_turn"
    assert turn.content[0]["text"] == "A tool call failed: EACCES"


@pytest.fixture
def endpoint() -> Iterator[int]:
    server = serve("127.0.0.1", 0, KEY)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def post(port: int, body: dict[str, Any], key: str | None = KEY) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    if key is not None:
        headers["x-api-key"] = key
    conn.request("POST", "/v1/messages?beta=true", json.dumps(body), headers)
    resp = conn.getresponse()
    data = resp.read().decode()
    conn.close()
    return resp.status, resp.getheader("content-type") or "", data


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    frames = []
    for frame in text.strip().split("\n\n"):
        event, data = frame.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        frames.append((event[7:], json.loads(data[6:])))
    return frames


def test_streaming_answers_are_server_sent_events(endpoint: int) -> None:
    body = {"model": "claude-x", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    status, kind, text = post(endpoint, body)
    assert (status, kind) == (200, "text/event-stream")
    frames = sse(text)
    assert [name for name, _ in frames] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in frames)
    assert frames[0][1]["message"]["model"] == "claude-x"
    assert frames[1][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_write",
        "name": "Write",
        "input": {},
    }
    delta = frames[2][1]["delta"]
    assert delta["type"] == "input_json_delta"
    assert json.loads(delta["partial_json"])["content"] == NOTES_TEXT
    assert frames[4][1]["delta"]["stop_reason"] == "tool_use"


def test_plain_requests_get_one_json_message(endpoint: int) -> None:
    history = [{"role": "user", "content": "go"}, tool_result("w", "ok"), tool_result("b", "3")]
    status, kind, text = post(endpoint, {"model": "m", "messages": history})
    assert (status, kind) == (200, "application/json")
    message = json.loads(text)
    assert (message["type"], message["role"], message["stop_reason"]) == (
        "message",
        "assistant",
        "end_turn",
    )
    assert message["content"] == [{"type": "text", "text": SUMMARY}]


@pytest.mark.parametrize("key", ["sk-ant-other", None])
def test_any_other_key_is_refused_as_the_real_service_does(endpoint: int, key: str | None) -> None:
    status, _, text = post(endpoint, {"messages": []}, key=key)
    assert status == 401
    assert json.loads(text) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }


def test_warm_up_head_needs_no_key_and_bad_requests_are_refused(endpoint: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", endpoint, timeout=10)
    conn.request("HEAD", "/")
    assert conn.getresponse().status == 200
    conn.close()
    status, _, text = post(endpoint, {"no": "messages"})
    assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"
    conn = http.client.HTTPConnection("127.0.0.1", endpoint, timeout=10)
    conn.request("POST", "/v1/complete", "{}", {"x-api-key": KEY})
    assert conn.getresponse().status == 404
    conn.close()
