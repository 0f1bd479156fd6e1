"""LLM backends. The two network backends run the REAL `anthropic` and `openai` SDKs against loopback
HTTP servers written here that speak each API's streaming wire format (Anthropic: SSE events
message_start .. message_stop; OpenAI: chat.completion.chunk SSE + [DONE]) and misbehave on cue:
rate limits, overload, streams cut mid-reply, error events, timeouts, refused keys."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from fastkernels.agent.llm import (
    DEFAULT_LLM_MODEL,
    AuthError,
    GenerationCancelled,
    LLMError,
    get_backend,
)
from fastkernels.agent.llm.library import LibraryBackend
from fastkernels.agent.llm.replay import RecordingBackend, ReplayBackend
from fastkernels.agent.prompts import CodeExtractionError, Prompt, extract_code
from fastkernels.errors import UsageError
from fastkernels.registry.tasks import kernel_source

KERNEL = textwrap.dedent('''\
    import torch
    from torch import nn


    class SiluAndMul(nn.Module):
        def forward(self, gate, up):
            return gate * torch.sigmoid(gate) * up
    ''')
REPLY = f"Here is a fused kernel.\n\n```python\n{KERNEL}```\n"
NO_CODE_REPLY = "I cannot write this kernel without knowing the GPU. Could you tell me more?"
PROMPT = Prompt(system="You write kernels.", user="Write SiluAndMul.")
OP = SimpleNamespace(name="silu_and_mul", level=1, class_name="SiluAndMul", source_code=KERNEL)
# Backoff in tests: a few ms (the production default starts at 2 s).
FAST = {"backoff_base": 0.01, "backoff_max": 0.02}


# ---- a scripted loopback server ----------------------------------------------------------------------


def _pieces(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def anthropic_events(text: str, *, input_tokens=42, output_tokens=17, stop_reason="end_turn") -> list[tuple[str, dict]]:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_test", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6",
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    for piece in _pieces(text):
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": piece}}))
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                           "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def openai_events(text: str, *, input_tokens=42, output_tokens=17, stop_reason="stop") -> list[tuple[str | None, dict | str]]:
    def chunk(delta, finish=None):
        return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": "test-model",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": None}

    events = [(None, chunk({"role": "assistant", "content": ""}))]
    events += [(None, chunk({"content": piece})) for piece in _pieces(text)]
    events.append((None, chunk({}, stop_reason)))
    events.append((None, {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": "test-model",
                          "choices": [], "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                                                   "total_tokens": input_tokens + output_tokens}}))
    events.append((None, "[DONE]"))
    return events


class Server:
    """Serves a script of steps, one per request; records every request."""

    def __init__(self, wire: str):
        self.wire = wire
        self.steps: list = []
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                server.requests.append({"path": self.path, "body": body,
                                        "headers": {k.lower(): v for k, v in self.headers.items()}})
                step = server.steps.pop(0) if server.steps else ("status", 500, "api_error", "script exhausted", {})
                try:
                    getattr(server, "_" + step[0])(self, *step[1:])
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        host, port = self.httpd.server_address
        self.url = f"http://{host}:{port}" + ("/v1" if wire == "openai" else "")

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # steps -------------------------------------------------------------------------------------------
    def _status(self, h, code, error_type, message, headers):
        if self.wire == "anthropic":
            payload = {"type": "error", "error": {"type": error_type, "message": message}}
        else:
            payload = {"error": {"message": message, "type": error_type, "code": error_type}}
        data = json.dumps(payload).encode()
        h.send_response(code)
        h.send_header("content-type", "application/json")
        h.send_header("content-length", str(len(data)))
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _stream(self, h, text, mode, at):
        """mode: "full"; "cut" (socket shut after `at` deltas); "error" (an error event after `at`
        deltas); "short" (a clean end of the body after `at` deltas, no end-of-message); "stall"
        (a pause of `at` seconds before the first delta)."""
        events = anthropic_events(text) if self.wire == "anthropic" else openai_events(text)
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("transfer-encoding", "chunked")
        h.end_headers()

        def send(event, data):
            payload = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"
            raw = frame.encode()
            h.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
            h.wfile.flush()

        deltas = 0
        for event, data in events:
            is_delta = event == "content_block_delta" or (
                isinstance(data, dict) and data.get("choices") and data["choices"][0]["delta"].get("content"))
            if is_delta:
                if mode == "stall" and deltas == 0:
                    time.sleep(at)
                if deltas == at and mode in ("cut", "error", "short"):
                    if mode == "cut":
                        h.connection.shutdown(socket.SHUT_RDWR)
                        h.close_connection = True
                        return
                    if mode == "error":
                        if self.wire == "anthropic":
                            send("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                        else:
                            send(None, {"error": {"message": "upstream overloaded", "type": "server_error"}})
                    break
                deltas += 1
            send(event, data)
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


def full(text=REPLY):
    return ("stream", text, "full", 0)


def status(code, error_type, message, **headers):
    return ("status", code, error_type, message, {k.replace("_", "-"): str(v) for k, v in headers.items()})


WIRES = {
    "anthropic": {"model": "claude-opus-4-6", "key_env": "ANTHROPIC_API_KEY", "overloaded": (529, "overloaded_error"),
                  "auth": (401, "authentication_error", "invalid x-api-key")},
    "openai": {"model": "openai:test-model", "key_env": "OPENAI_API_KEY", "overloaded": (503, "server_error"),
               "auth": (401, "invalid_request_error", "Incorrect API key provided: sk-bad")},
}


@pytest.fixture(params=sorted(WIRES))
def wire(request, monkeypatch):
    """(server, make_backend) for one wire format; the backend talks only to the loopback server."""
    name = request.param
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(WIRES[name]["key_env"], "sk-test-key")
    server = Server(name)

    def make(**opts):
        return get_backend(WIRES[name]["model"], server.url, **{**FAST, "network_retries": 3, **opts})

    yield SimpleNamespace(name=name, server=server, make=make, **WIRES[name])
    server.close()


class Listener:
    """What a UI sees: the streamed text, cleared when the backend says a reply restarted."""

    def __init__(self):
        self.shown = ""
        self.all_chunks: list[str] = []
        self.notices = []

    def on_text(self, text):
        self.shown += text
        self.all_chunks.append(text)

    def on_retry(self, notice):
        self.notices.append(notice)
        if notice.discarded_chars:
            assert notice.discarded_chars == len(self.shown)
            self.shown = ""


def run(backend, listener=None):
    listener = listener or Listener()
    completion = backend.generate(PROMPT, listener.on_text, op=OP, attempt=1, on_retry=listener.on_retry)
    return completion, listener


# ---- network backends ---------------------------------------------------------------------------------


def test_streams_reply_and_records_usage(wire):
    wire.server.steps = [full()]
    completion, seen = run(wire.make())
    assert completion.text == REPLY and seen.shown == REPLY
    assert len(seen.all_chunks) > 10  # it streamed, in pieces
    assert (completion.input_tokens, completion.output_tokens) == (42, 17)
    assert completion.retries == 0 and completion.origin == "generated" and not completion.truncated
    req = wire.server.requests[0]
    assert req["body"]["stream"] is True
    if wire.name == "anthropic":
        assert req["path"] == "/v1/messages"
        # x-api-key in older SDKs, a bearer token in newer ones: either way our key went out.
        h = req["headers"]
        assert h.get("x-api-key") == "sk-test-key" or h.get("authorization") == "Bearer sk-test-key"
        assert req["body"]["model"] == "claude-opus-4-6"
        assert req["body"]["system"] == PROMPT.system
        assert req["body"]["messages"] == [{"role": "user", "content": PROMPT.user}]
        assert completion.stop_reason == "end_turn"
    else:
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["authorization"] == "Bearer sk-test-key"
        assert req["body"]["model"] == "test-model"
        assert req["body"]["messages"] == [{"role": "system", "content": PROMPT.system},
                                           {"role": "user", "content": PROMPT.user}]
        assert req["body"]["stream_options"] == {"include_usage": True}
        assert completion.stop_reason == "stop"
    assert extract_code(completion.text, "SiluAndMul") == KERNEL


def test_rate_limit_then_success_honours_retry_after(wire):
    wire.server.steps = [status(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit",
                                retry_after=0.3), full()]
    t0 = time.monotonic()
    completion, seen = run(wire.make())
    assert time.monotonic() - t0 >= 0.3  # waited as told, not the 10 ms backoff
    assert completion.text == REPLY and completion.retries == 1
    assert len(wire.server.requests) == 2
    (notice,) = seen.notices
    assert "429" in notice.reason and notice.delay >= 0.3 and notice.discarded_chars == 0
    assert (notice.try_number, notice.max_tries) == (2, 4)


def test_overloaded_then_success(wire):
    code, etype = wire.overloaded
    wire.server.steps = [status(code, etype, "Overloaded"), status(code, etype, "Overloaded"), full()]
    completion, seen = run(wire.make())
    assert completion.text == REPLY and completion.retries == 2
    assert [str(code) in n.reason for n in seen.notices] == [True, True]


def test_stream_cut_mid_reply_restarts_and_clears(wire):
    wire.server.steps = [("stream", REPLY, "cut", 5), full()]
    completion, seen = run(wire.make())
    assert completion.text == REPLY and completion.retries == 1
    (notice,) = seen.notices
    assert notice.discarded_chars == 5 * 7  # five 7-char deltas had been shown
    assert seen.shown == REPLY  # after the clear, the UI holds exactly the final reply
    assert "".join(seen.all_chunks) == REPLY[:35] + REPLY


def test_stream_ending_before_end_of_message_is_retried(wire):
    wire.server.steps = [("stream", REPLY, "short", 3), full()]
    completion, seen = run(wire.make())
    assert completion.text == REPLY and completion.retries == 1
    assert "before the reply was complete" in seen.notices[0].reason


def test_error_event_inside_stream_is_retried(wire):
    wire.server.steps = [("stream", REPLY, "error", 4), full()]
    completion, seen = run(wire.make())
    assert completion.text == REPLY and completion.retries == 1
    assert seen.notices[0].discarded_chars == 4 * 7
    assert "overloaded" in seen.notices[0].reason.lower()


def test_read_timeout_is_retried(wire):
    # A 0.5 s read timeout against a 1.5 s stall. Spare replies follow: on a loaded CI machine a
    # healthy reply can also miss 0.5 s once, which is the behaviour under test as well.
    wire.server.steps = [("stream", REPLY, "stall", 1.5), full(), full(), full()]
    completion, seen = run(wire.make(timeout=0.5))
    assert completion.text == REPLY and completion.retries >= 1
    assert "timed out" in seen.notices[0].reason.lower()


def test_reply_without_code_is_a_code_extraction_error(wire):
    wire.server.steps = [full(NO_CODE_REPLY)]
    completion, _ = run(wire.make())
    assert completion.text == NO_CODE_REPLY
    with pytest.raises(CodeExtractionError, match="```python"):
        extract_code(completion.text, "SiluAndMul")


def test_invalid_key_fails_fast_with_one_line(wire):
    code, etype, msg = wire.auth
    wire.server.steps = [status(code, etype, msg)] + [full()] * 3
    backend = wire.make(backoff_base=60.0)  # a retry would sleep >= 30 s
    t0 = time.monotonic()
    with pytest.raises(AuthError) as info:
        run(backend)
    assert time.monotonic() - t0 < 20, "an invalid key waited for a retry"
    assert len(wire.server.requests) == 1  # never retried
    text = str(info.value)
    assert "\n" not in text and "401" in text and msg in text and wire.key_env in text
    assert info.value.fatal


def test_gives_up_after_the_retry_budget(wire):
    wire.server.steps = [status(500, "api_error", "Internal server error")] * 3
    with pytest.raises(LLMError) as info:
        run(wire.make(network_retries=2))
    assert len(wire.server.requests) == 3
    assert "gave up after 3 tries" in str(info.value) and "500" in str(info.value)
    assert not info.value.fatal  # another attempt later may work


def test_bad_request_is_not_retried(wire):
    wire.server.steps = [status(400, "invalid_request_error", "max_tokens: too large")] + [full()]
    with pytest.raises(LLMError) as info:
        run(wire.make())
    assert len(wire.server.requests) == 1 and info.value.fatal
    assert "max_tokens: too large" in str(info.value)


def test_plain_string_prompt_is_the_user_message(wire):
    wire.server.steps = [full()]
    completion = wire.make().generate("Write SiluAndMul.", lambda t: None, op=OP, attempt=1)
    assert completion.text == REPLY
    assert wire.server.requests[0]["body"]["messages"] == [{"role": "user", "content": "Write SiluAndMul."}]
    assert "system" not in wire.server.requests[0]["body"]


def test_listener_exception_stops_generation_without_retry(wire):
    wire.server.steps = [full(), full()]

    def on_text(text):
        raise GenerationCancelled("user pressed stop")

    with pytest.raises(GenerationCancelled):
        wire.make().generate(PROMPT, on_text, op=OP, attempt=1)
    assert len(wire.server.requests) == 1


def test_openai_server_rejecting_stream_options_is_asked_again_without(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = Server("openai")
    try:
        server.steps = [status(400, "invalid_request_error", "Unrecognized request argument: stream_options"), full()]
        backend = get_backend("openai:local-model", server.url, **FAST)  # no key: a local server
        completion, _ = run(backend)
        assert completion.text == REPLY
        assert "stream_options" in server.requests[0]["body"]
        assert "stream_options" not in server.requests[1]["body"]
        assert server.requests[1]["headers"]["authorization"].startswith("Bearer ")
        assert backend.label == f"openai:local-model@{server.url}"
    finally:
        server.close()


# ---- choosing a backend ---------------------------------------------------------------------------------


def test_default_model_without_key_names_the_offline_backend(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UsageError) as info:
        get_backend(DEFAULT_LLM_MODEL)
    text = str(info.value)
    assert "\n" not in text and "ANTHROPIC_API_KEY" in text and "--llm-model library" in text


def test_openai_without_key_or_base_url_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UsageError, match="--llm-base-url"):
        get_backend("openai:gpt-5")


def test_model_forms_pick_backends(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-x")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-y")
    assert get_backend("claude-opus-4-6").label == "anthropic:claude-opus-4-6"
    assert get_backend("anthropic:claude-sonnet-4-5").label == "anthropic:claude-sonnet-4-5"
    assert get_backend("openai:gpt-5").label == "openai:gpt-5"
    assert get_backend("library").label == "library (verified kernels, not generated)"
    assert get_backend(f"replay:{tmp_path}").name == "replay"
    assert isinstance(get_backend("library", record_to=tmp_path / "rec"), RecordingBackend)
    for bad in ("gpt-4", "", "replay:", "anthropic:", "openai:"):
        with pytest.raises(UsageError):
            get_backend(bad)
    with pytest.raises(UsageError, match="no such folder"):
        get_backend(f"replay:{tmp_path / 'missing'}")


def test_offline_backends_never_import_the_sdks(tmp_path):
    """The GPU box has neither SDK: library and replay must work with both imports failing, and a
    network backend must say what to install."""
    (tmp_path / "silu_and_mul.md").write_text(REPLY)
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("anthropic", "openai"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        from types import SimpleNamespace
        from fastkernels.agent.llm import get_backend
        from fastkernels.errors import UsageError
        op = SimpleNamespace(name="silu_and_mul", level=1, class_name="SiluAndMul", source_code="x = 1\\n")
        out = []
        get_backend("library").generate(None, out.append, op=op, attempt=1)
        c = get_backend("replay:{tmp_path}").generate(None, out.append, op=op, attempt=1)
        assert c.text == {REPLY!r}
        import os
        os.environ["ANTHROPIC_API_KEY"] = "k"
        try:
            get_backend("claude-opus-4-6")
        except UsageError as e:
            print("USAGE:", e)
        assert "anthropic" not in sys.modules and "openai" not in sys.modules
        print("OK")
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "USAGE:" in proc.stdout and "pip install anthropic" in proc.stdout


# ---- library and replay -----------------------------------------------------------------------------------


@pytest.fixture
def tasks_root(tmp_path, monkeypatch):
    root = tmp_path / "tasks"
    (root / "library" / "L1").mkdir(parents=True)
    (root / "library" / "L1" / "silu_and_mul.py").write_text(KERNEL)
    monkeypatch.setenv("FASTKERNELS_TASKS", str(root))
    return root


def test_library_streams_the_verified_kernel(tasks_root):
    seen = Listener()
    completion = LibraryBackend(chunk_chars=50).generate(PROMPT, seen.on_text, op=OP, attempt=1)
    assert seen.shown == completion.text and len(seen.all_chunks) == -(-len(completion.text) // 50)
    assert completion.origin == "library"
    assert "not generated" in completion.text.splitlines()[0]
    assert extract_code(completion.text, "SiluAndMul") == KERNEL


def test_library_without_a_kernel_returns_the_baseline_labelled(tasks_root):
    baseline = "import torch\nfrom torch import nn\n\n\nclass Attention(nn.Module):\n    pass\n"
    op = SimpleNamespace(name="attention", level=1, class_name="Attention", source_code=baseline)
    completion = LibraryBackend().generate(PROMPT, lambda t: None, op=op, attempt=1)
    assert completion.origin == "baseline" and completion.model == "library:baseline"
    assert "baseline implementation unchanged" in completion.text
    assert extract_code(completion.text, "Attention") == baseline


def test_library_ships_real_kernels():
    """The repository's own library: the backend finds a shipped kernel for rms_norm."""
    from fastkernels.agent.llm.library import library_kernel_path

    path = library_kernel_path(1, "rms_norm")
    assert path is not None
    op = SimpleNamespace(name="rms_norm", level=1, class_name="RMSNorm", source_code="")
    completion = LibraryBackend().generate(None, lambda t: None, op=op, attempt=1)
    assert extract_code(completion.text, "RMSNorm") == kernel_source(path).rstrip() + "\n"


def test_replay_layout_and_attempts(tmp_path):
    (tmp_path / "silu_and_mul").mkdir()
    (tmp_path / "silu_and_mul" / "1.md").write_text(NO_CODE_REPLY)
    (tmp_path / "silu_and_mul" / "2.md").write_text(REPLY)
    (tmp_path / "silu_and_mul" / "2.prompt.md").write_text("not a reply")
    (tmp_path / "rms_norm.md").write_text("rms reply")
    backend = get_backend(f"replay:{tmp_path}", chunk_chars=10)

    def reply(op_name, attempt):
        seen = Listener()
        op = SimpleNamespace(name=op_name, level=1)
        c = backend.generate(PROMPT, seen.on_text, op=op, attempt=attempt)
        assert seen.shown == c.text and c.origin == "replay"
        return c

    assert reply("silu_and_mul", 1).text == NO_CODE_REPLY
    assert reply("silu_and_mul", 2).text == REPLY
    assert reply("silu_and_mul", 5).text == REPLY  # past the last numbered reply: the last one
    assert reply("rms_norm", 3).text == "rms reply"
    with pytest.raises(LLMError, match="no recorded reply for embedding attempt 1") as info:
        reply("embedding", 1)
    assert info.value.fatal


def test_recording_then_replaying_gives_the_same_replies(tasks_root, tmp_path):
    rec_dir = tmp_path / "recorded"
    recorder = get_backend("library", record_to=rec_dir)
    first = recorder.generate(PROMPT, lambda t: None, op=OP, attempt=1)
    assert (rec_dir / "silu_and_mul" / "1.md").read_text() == first.text
    assert "Write SiluAndMul." in (rec_dir / "silu_and_mul" / "1.prompt.md").read_text()
    again = ReplayBackend(rec_dir).generate(PROMPT, lambda t: None, op=OP, attempt=1)
    assert again.text == first.text
