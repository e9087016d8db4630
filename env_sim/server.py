"""HTTP server speaking the reference resources server's API for any environment, on the standard library only.

Clients written for a NeMo Gym resources server (e.g. ``workplace_assistant``) work unchanged:

* ``POST /seed_session``   -> ``{}``; starts a fresh episode for the caller's session cookie
* ``POST /<tool_name>``    JSON body = keyword arguments -> ``{"output": ...}`` (HTTP 400 without a seeded session)
* ``POST /verify``         row fields + ``response`` (Responses-API object) -> the same + ``reward``;
                           the predicted calls are every ``function_call`` item of ``response.output``
* ``POST /aggregate_metrics`` ``{"verify_responses": [...]}`` (or a bare list) -> mean reward and count

The session id travels in a ``session_id`` cookie, set on the first response that lacks one.
Each session has its own lock, so concurrent sessions never share or interleave state. What a session's state is,
how a tool runs and how a trajectory is scored come from the ``Environment`` the server is given.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from http import cookies
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from env_sim.environment import Environment, get_environment
from env_sim.execute import dump_output, unprocessable_body

SESSION_COOKIE = "session_id"
NO_SESSION = "Session not initialized. Please call seed_session first."
LISTEN_BACKLOG = 1024  # connections the kernel queues while every handler thread is busy (the stdlib's 5 resets
#                        clients of a few hundred parallel rollouts)
READ_TIMEOUT_S = 60.0  # a request whose body never arrives (shorter than its Content-Length) gives its thread back
MAX_BODY_BYTES = 64 * 2**20


class BadRequest(Exception):
    """A request the server answers with `status` and a JSON detail instead of running it."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class _Session:
    __slots__ = ("state", "lock")

    def __init__(self, state):
        self.state = state
        self.lock = threading.Lock()


class SessionStore:
    """Episode states by session id (thread-safe); ``fresh_state()`` makes a new session's state."""

    def __init__(self, fresh_state: Callable[[], Any]) -> None:
        self._fresh_state = fresh_state
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()

    def seed(self, session_id: str) -> None:
        session = _Session(self._fresh_state())
        with self._lock:
            self._sessions[session_id] = session

    def get(self, session_id: str) -> _Session | None:
        with self._lock:
            return self._sessions.get(session_id)

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def predicted_calls(response: dict) -> list[dict]:
    """Every ``function_call`` item of a Responses-API response's output, in order."""
    output = response.get("output") or []
    if not isinstance(output, list):
        raise BadRequest(422, f"response.output must be a list of items, got {type(output).__name__}")
    return [item for item in output if isinstance(item, dict) and item.get("type") == "function_call"]


def verify_body(env: Environment, body: dict) -> dict:
    """The /verify reply for one request body: the body echoed back with ``reward`` added."""
    response = body["response"]
    reward = env.verify(predicted_calls(response), body["ground_truth"]).reward
    return {**body, "reward": reward}


def aggregate(verify_responses: list) -> dict:
    if not isinstance(verify_responses, list):
        raise BadRequest(422, f"verify_responses must be a list, got {type(verify_responses).__name__}")
    rewards = []
    for index, item in enumerate(verify_responses):
        if isinstance(item, dict) and "reward" in item:
            reward = item["reward"]
            if isinstance(reward, bool) or not isinstance(reward, (int, float)):
                raise BadRequest(422, f"verify_responses[{index}].reward must be a number, got {reward!r}")
            rewards.append(float(reward))
    return {"num_verify_responses": len(rewards), "mean_reward": sum(rewards) / len(rewards) if rewards else 0.0}


class _Handler(BaseHTTPRequestHandler):
    server: EnvServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet by default; --verbose turns logging on
        if self.server.verbose:
            super().log_message(fmt, *args)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout_s)  # reads (request line, headers, body) time out

    # --- plumbing ---------------------------------------------------------------------------------
    def _session_id(self) -> tuple[str, bool]:
        jar = cookies.SimpleCookie(self.headers.get("Cookie", ""))
        morsel = jar.get(SESSION_COOKIE)
        if morsel and morsel.value:
            return morsel.value, False
        return secrets.token_hex(16), True

    def _reply(self, status: int, text: str, new_session: str | None = None) -> None:
        data = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if new_session:
            self.send_header("Set-Cookie", f"{SESSION_COOKIE}={new_session}; Path=/; HttpOnly; SameSite=lax")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, obj, new_session: str | None = None) -> None:
        self._reply(status, json.dumps(obj, ensure_ascii=False, separators=(",", ":")), new_session)

    def _read_body(self):
        """(parsed JSON body, error text or None); an empty body reads as None."""
        header = (self.headers.get("Content-Length") or "0").strip()
        if not header.isdigit():
            raise BadRequest(400, f"Content-Length must be a non-negative integer, got {header!r}")
        length = int(header)
        if length > MAX_BODY_BYTES:
            raise BadRequest(413, f"body of {length} bytes is over the limit of {MAX_BODY_BYTES}")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise BadRequest(400, f"body ended after {len(raw)} of its {length} bytes")
        if not raw.strip():
            return None, None
        try:
            return json.loads(raw), None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            detail = {
                "type": "json_invalid",
                "loc": ["body", getattr(e, "pos", 0)],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": getattr(e, "msg", str(e))},
            }
            return None, json.dumps({"detail": [detail]}, separators=(",", ":"))

    # --- routes -----------------------------------------------------------------------------------
    def do_GET(self):
        self._json(405, {"detail": "Method Not Allowed"})

    def do_POST(self):
        session_id, is_new = self._session_id()
        new_cookie = session_id if is_new else None
        try:
            self._route(session_id, new_cookie)
        except BadRequest as err:
            self.close_connection = err.status in (400, 408, 413)  # the rest of the stream cannot be trusted
            self._json(err.status, {"detail": err.detail}, new_cookie)
        except TimeoutError:
            self.close_connection = True
            self._json(408, {"detail": f"the request body did not arrive within {self.server.read_timeout_s:g} s"})
        except Exception as err:  # a bug of ours: the client still gets an answer, and the thread lives on
            self.close_connection = True
            self._json(500, {"detail": f"internal error: {type(err).__name__}: {err}"}, new_cookie)

    def _route(self, session_id: str, new_cookie: str | None) -> None:
        body, error = self._read_body()
        if error is not None:
            return self._reply(422, error, new_cookie)
        path = self.path.split("?", 1)[0].lstrip("/")
        if path == "seed_session":
            self.server.sessions.seed(session_id)
            return self._json(200, {}, new_cookie)
        if path == "verify":
            return self._verify(session_id, body, new_cookie)
        if path == "aggregate_metrics":
            items = body.get("verify_responses", []) if isinstance(body, dict) else (body or [])
            return self._json(200, aggregate(items), new_cookie)
        if not path or "/" in path:
            return self._json(404, {"detail": "Not Found"}, new_cookie)
        self._tool(session_id, path, body, new_cookie)

    def _tool(self, session_id: str, name: str, body, new_cookie) -> None:
        session = self.server.sessions.get(session_id)
        if session is None:
            return self._json(400, {"detail": NO_SESSION}, new_cookie)
        if not isinstance(body, dict):
            return self._reply(422, unprocessable_body(body), new_cookie)
        with session.lock:
            text = dump_output(self.server.env.call_tool(session.state, name, body))
        self._reply(200, text, new_cookie)

    def _verify(self, session_id: str, body, new_cookie) -> None:
        # The episode is over, as in the reference. Dropped before replying: a client that calls again as soon
        # as it has the reply must already find no session.
        self.server.sessions.drop(session_id)
        if not isinstance(body, dict):
            return self._reply(422, unprocessable_body(body), new_cookie)
        missing = [k for k in ("response", "ground_truth") if k not in body]
        if missing or not isinstance(body["response"], dict):
            detail = [
                {"type": "missing", "loc": ["body", k], "msg": "Field required", "input": body} for k in missing
            ] or [
                {
                    "type": "model_type",
                    "loc": ["body", "response"],
                    "msg": "Input should be an object",
                    "input": body["response"],
                }
            ]
            return self._json(422, {"detail": detail}, new_cookie)
        try:
            reply = verify_body(self.server.env, body)
        except ValueError as e:
            return self._json(422, {"detail": str(e)}, new_cookie)
        self._json(200, reply, new_cookie)


class EnvServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        env: Environment,
        address: tuple[str, int],
        verbose: bool = False,
        read_timeout_s: float = READ_TIMEOUT_S,
    ):
        super().__init__(address, _Handler)
        self.env = env
        self.sessions = SessionStore(env.fresh_state)
        self.verbose = verbose
        self.read_timeout_s = read_timeout_s


def make_server(
    env: str | Environment | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    verbose: bool = False,
    read_timeout_s: float = READ_TIMEOUT_S,
) -> EnvServer:
    """A ready server for ``env`` (an Environment or its name; None: the default environment); port 0 picks a
    free port (``server.server_address[1]``); call serve_forever()."""
    return EnvServer(get_environment(env), (host, port), verbose=verbose, read_timeout_s=read_timeout_s)


def serve(
    env: str | Environment | None = None, host: str = "127.0.0.1", port: int = 8000, verbose: bool = False
) -> None:
    server = make_server(env, host, port, verbose)
    print(f"env_sim server ({server.env.name}) listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
