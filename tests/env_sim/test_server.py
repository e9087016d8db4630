"""The HTTP server: reference-compatible routes, cookies, and many concurrent sessions."""

import http.client
import json
import threading

import pytest

from env_sim.server import NO_SESSION, make_server


@pytest.fixture(scope="module")
def server():
    srv = make_server("workplace_assistant", "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class Client:
    """A tiny cookie-keeping client (one per simulated agent)."""

    def __init__(self, server):
        self.port = server.server_address[1]
        self.cookie = None

    def post(self, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        conn.request("POST", path, body=json.dumps(body) if body is not None else "", headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        set_cookie = resp.getheader("Set-Cookie")
        if set_cookie:
            self.cookie = set_cookie.split(";", 1)[0]
        conn.close()
        return resp.status, text


def test_tool_call_needs_a_seeded_session(server):
    c = Client(server)
    status, text = c.post("/email_delete_email", {"email_id": "00000001"})
    assert status == 400 and json.loads(text) == {"detail": NO_SESSION}
    assert c.cookie and c.cookie.startswith("session_id=")


def test_episode_over_http(server):
    c = Client(server)
    assert c.post("/seed_session", {}) == (200, "{}")
    status, text = c.post("/company_directory_find_email_address", {"name": "Nadia"})
    assert status == 200 and text == '{"output":["nadia.moreau@atlas.com"]}'
    status, text = c.post("/email_delete_email", {"email_id": "00000259", "extra": None})
    assert text == '{"output":"Email deleted successfully."}'
    status, text = c.post("/email_delete_email", {"email_id": "00000259"})
    assert text == '{"output":"Email not found."}'  # state persists within the session
    status, text = c.post("/not_a_tool", {})
    assert status == 200 and json.loads(text) == {"output": "Error executing tool 'not_a_tool': 'not_a_tool'"}
    row = {
        "id": 7,
        "category": "workplace_assistant_email",
        "environment_name": "workplace_assistant",
        "ground_truth": [{"name": "email_delete_email", "arguments": '{"email_id": "00000259"}'}],
    }
    response = {
        "id": "resp_1",
        "output": [
            {
                "type": "function_call",
                "name": "email_delete_email",
                "arguments": '{"email_id":"00000259"}',
                "call_id": "c1",
            },
            {"type": "function_call_output", "call_id": "c1", "output": '{"output":"Email deleted successfully."}'},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Done"}]},
        ],
    }
    status, text = c.post("/verify", {**row, "response": response})
    reply = json.loads(text)
    assert status == 200 and reply["reward"] == 1.0 and reply["id"] == 7 and reply["response"] == response
    # verify ends the episode, as the reference does
    assert c.post("/email_delete_email", {"email_id": "00000001"})[0] == 400
    status, text = c.post("/verify", {**row, "response": {"output": []}})
    assert json.loads(text)["reward"] == 0.0
    status, text = c.post("/aggregate_metrics", {"verify_responses": [{"reward": 1.0}, {"reward": 0.0}]})
    assert json.loads(text) == {"num_verify_responses": 2, "mean_reward": 0.5}


def test_bad_bodies(server):
    c = Client(server)
    c.post("/seed_session", {})
    status, text = c.post("/email_delete_email", [1, 2])
    assert status == 422 and json.loads(text)["detail"][0]["type"] == "model_attributes_type"
    assert c.post("/verify", {"ground_truth": []})[0] == 422


def test_concurrent_sessions_do_not_share_state(server):
    n_clients, n_sends = 12, 8
    results, errors = {}, []

    def agent(i):
        try:
            c = Client(server)
            c.post("/seed_session", {})
            for j in range(n_sends):
                c.post("/email_send_email", {"recipient": f"user{i}@x.com", "subject": f"s{j}", "body": "b"})
            status, text = c.post("/email_search_emails", {"query": f"user{i}@x.com", "page_size": 100})
            found = json.loads(text)["output"]
            results[i] = (
                [e["sender/recipient"] for e in found["emails"]],
                sorted(e["email_id"] for e in found["emails"]),
            )
        except Exception as e:  # surfaced below
            errors.append(repr(e))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == n_clients
    for i, (recipients, ids) in results.items():
        assert recipients == [f"user{i}@x.com"] * n_sends  # nobody else's emails leaked in
        assert ids == [str(500 + k) for k in range(n_sends)]  # every session numbered from its own state


def test_python_m_env_sim_serve_starts_the_server():
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "env_sim", "serve", "--port", str(port)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("POST", "/seed_session", body="{}")
                resp = conn.getresponse()
                assert resp.status == 200 and resp.getheader("Set-Cookie").startswith("session_id=")
                break
            except ConnectionRefusedError:
                assert time.time() < deadline, "server did not start"
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)


def raw_request(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict]:
    """Send bytes as they are (malformed on purpose) and read the reply's status and JSON body."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        while len(body) < length:
            body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize(
    "path, body, length, status, detail",
    [
        ("/seed_session", b"", "abc", 400, "Content-Length"),
        ("/seed_session", b"", "-5", 400, "Content-Length"),
        ("/seed_session", b"", "999999999999", 413, "over the limit"),
        ("/verify", b'{"response": {"output": 3}, "ground_truth": []}', None, 422, "response.output must be a list"),
        ("/aggregate_metrics", b'{"verify_responses": [{"reward": "high"}]}', None, 422, "reward must be a number"),
    ],
)
def test_every_malformed_request_gets_a_json_error(server, path, body, length, status, detail):
    length = str(len(body)) if length is None else length
    request = f"POST {path} HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode() + body
    got, reply = raw_request(server.server_address[1], request)
    assert got == status and detail in reply["detail"]


def test_a_body_that_never_arrives_times_out_with_a_reply():
    srv = make_server("workplace_assistant", "127.0.0.1", 0, read_timeout_s=0.5)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        status, body = raw_request(
            srv.server_address[1], b"POST /seed_session HTTP/1.1\r\nContent-Length: 20\r\n\r\n{}"
        )
        assert status == 408 and "did not arrive" in body["detail"]
        assert Client(srv).post("/seed_session", {}) == (200, "{}")  # the server goes on serving
    finally:
        srv.shutdown()
        srv.server_close()


def test_200_concurrent_sessions_of_20_tool_calls(server):
    """Connection bursts beyond the stdlib's backlog of 5: no reset, no error, no state shared."""
    n_clients, n_calls = 200, 20
    results, errors = {}, []
    start = threading.Barrier(n_clients)

    def agent(i):
        try:
            c = Client(server)
            start.wait()
            assert c.post("/seed_session", {}) == (200, "{}")
            for j in range(n_calls - 1):
                status, _ = c.post("/email_send_email", {"recipient": f"u{i}@x.com", "subject": f"s{j}", "body": "b"})
                assert status == 200
            status, text = c.post("/email_search_emails", {"query": f"u{i}@x.com", "page_size": 100})
            results[i] = sorted(e["subject"] for e in json.loads(text)["output"]["emails"])
        except Exception as e:  # surfaced below
            errors.append(repr(e))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert len(results) == n_clients
    assert all(subjects == sorted(f"s{j}" for j in range(n_calls - 1)) for subjects in results.values())
