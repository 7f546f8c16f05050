"""The operator CLI as a person and a script use it: every error is one line on stderr with
a documented exit code, every listing prints JSON with --json, progress is a redrawn bar
on a terminal and plain lines elsewhere, completion scripts load, every --help has examples.

All through the real binary (`python -m hub.cli.main`) against the real `hub api`."""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from hub.cli.main import build_parser
from hub.dev.smtp import SmtpSink
from tests.conftest import DB_URL, ROOT, Procs, base_env
from tests.helpers import Api, free_port

pytestmark = pytest.mark.e2e

HUB = [sys.executable, "-m", "hub.cli.main"]


def hub(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HUB, *args], cwd=ROOT, env=base_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(out: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The run failed with `code` and said why in exactly one line, without a traceback."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and lines[0].startswith("hub: "), out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def as_app(api_server: str, key: str) -> dict[str, str]:
    return {"HUB_API_URL": api_server, "HUB_API_KEY": key}


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


@pytest.fixture
def odd_api() -> Iterator[str]:
    """An HTTP server that answers 200 with JSON the hub never sends (`{}` for everything)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- errors -----------------------------------------------------------------------------

async def test_unreachable_api_is_one_line_exit_4(silent_server: int) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    out = hub("sessions", "list", HUB_API_URL=refused, HUB_API_KEY="k")
    one_line_error(out, 4, "cannot reach the API", "connection refused", refused)

    started = time.monotonic()
    out = hub("--timeout", "1", "sessions", "list",
              HUB_API_URL=f"http://127.0.0.1:{silent_server}", HUB_API_KEY="k")
    one_line_error(out, 4, "cannot reach the API", "timed out")
    assert time.monotonic() - started < 15

    out = hub("transports", "list", HUB_API_URL="127.0.0.1:8", HUB_API_KEY="k")
    one_line_error(out, 1, "not valid", "HUB_API_URL")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a network-less run")
async def test_unresolvable_api_host_is_one_line_exit_4() -> None:
    """In a namespace without network the resolver cannot be asked: a real DNS failure
    that sends nothing off the machine."""
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not available")
    out = subprocess.run(["unshare", "-rn", *HUB, "sessions", "list"], cwd=ROOT,
                         env=base_env(HUB_API_URL="http://hub-api.example:8080", HUB_API_KEY="k"),
                         capture_output=True, text=True, timeout=60)
    one_line_error(out, 4, "cannot reach the API", "host name cannot be resolved")


async def test_unreachable_database_is_one_line(database: Any) -> None:
    stopped = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/hub"
    for args in (("migrate",), ("apps", "create", "x")):
        line = one_line_error(hub(*args, HUB_DATABASE_URL=stopped), 4,
                              "cannot reach the database", "refused")
        assert "s3cret" not in line
    one_line_error(hub("migrate", HUB_DATABASE_URL="mysql://x@127.0.0.1/x"), 1,
                   "HUB_DATABASE_URL", "not valid")
    one_line_error(hub("migrate", HUB_DATABASE_URL=DB_URL.rsplit("/", 1)[0].replace(
        "postgres@", "no_such_role@") + "/x"), 1, "database", "refused", "no_such_role")
    assert hub("migrate").returncode == 0


async def test_bad_instruction_files(api_server: str, api: Api, tmp_path: Path) -> None:
    env = as_app(api_server, api.key)
    one_line_error(hub("send", str(tmp_path / "missing.json"), **env), 1,
                   "cannot read", "No such file")
    one_line_error(hub("send", str(tmp_path), **env), 1, "cannot read", "directory")
    cases = {"garbage.json": ("{not json", "not valid JSON"),
             "list.json": ("[1, 2]", "must hold a JSON object"),
             "null.json": ("null", "not null")}
    for name, (text, needle) in cases.items():
        (tmp_path / name).write_text(text)
        one_line_error(hub("send", str(tmp_path / name), **env), 1, name, needle)
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    one_line_error(hub("send", str(tmp_path / "latin1.json"), **env), 1, "not UTF-8")

    bad = tmp_path / "invalid.json"
    bad.write_text(json.dumps({"transport": {"type": "email"},
                               "audience": ["not-an-address", "ok@example.com"]}))
    line = one_line_error(hub("send", str(bad), **env), 1, "HTTP 422", "invalid-instruction")
    assert "audience.0" in line  # the API's details, on the same line

    one_line_error(hub("transports", "add", "--name", "x", "--type", "email", "--config", "{",
                       **env), 1, "--config is not valid JSON")


async def test_unknown_and_malformed_session_ids(api_server: str, api: Api) -> None:
    env = as_app(api_server, api.key)
    unknown = str(uuid.uuid4())
    for args in (("sessions", "show", unknown), ("sessions", "cancel", unknown),
                 ("report", unknown), ("sessions", "show", unknown, "--follow")):
        one_line_error(hub(*args, **env), 1, "HTTP 404", unknown)
    for args in (("sessions", "show", "abc"), ("report", "../transports"),
                 ("sessions", "pause", "1 2")):
        one_line_error(hub(*args, **env), 2, "is not a session id")
    one_line_error(hub("sessions", "frobnicate", **env), 2, "invalid choice")
    one_line_error(hub("--timeout", "0", "sessions", "list", **env), 2, "seconds above 0")
    one_line_error(hub("send", "x.json", "--interval", "soon", **env), 2, "seconds above 0")
    one_line_error(hub("apps", "keys", "revoke", str(api.app.app_id), "nope", **env), 2,
                   "is not a key id")


async def test_missing_and_revoked_keys(api_server: str, api: Api) -> None:
    one_line_error(hub("sessions", "list", HUB_API_URL=api_server), 1, "API key is needed")
    one_line_error(hub("sessions", "list", **as_app(api_server, "hub_nope")), 1, "HTTP 401")

    app = str(api.app.app_id)
    env = as_app(api_server, api.key)
    out = hub("apps", "keys", "create", app, "--json", **env)
    assert out.returncode == 0, out.stderr
    new = json.loads(out.stdout)
    second = as_app(api_server, new["apiKey"])
    assert hub("sessions", "list", "--json", **second).returncode == 0

    out = hub("apps", "keys", "revoke", app, new["id"], **env)
    assert out.returncode == 0 and "revoked" in out.stdout, out.stderr
    one_line_error(hub("sessions", "list", **second), 1, "HTTP 401", "invalid-api-key")
    one_line_error(hub("apps", "keys", "list", app, **second), 1, "HTTP 401")
    keys = {k["id"]: k for k in json.loads(hub("apps", "keys", "list", app, "--json",
                                               **env).stdout)}
    assert keys[new["id"]]["revokedAt"] and len(keys) == 2
    assert sum(1 for k in keys.values() if k["revokedAt"] is None) == 1
    table = hub("apps", "keys", "list", app, **env).stdout
    assert "revoked" in table and "active" in table
    one_line_error(hub("apps", "keys", "revoke", app, str(uuid.uuid4()), **env), 1,
                   "HTTP 404", "key-not-found")


def _as_at_a_terminal() -> None:
    """In the child, before it runs the CLI: Ctrl-C does what it does at a terminal. A
    suite started in the background (`cmd &` without job control) hands its children
    SIGINT ignored, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_interrupt_is_one_line_exit_130(silent_server: int) -> None:
    proc = subprocess.Popen([*HUB, "sessions", "list"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=base_env(
                                HUB_API_URL=f"http://127.0.0.1:{silent_server}", HUB_API_KEY="k"),
                            preexec_fn=_as_at_a_terminal)
    time.sleep(2)  # waiting for an answer that never comes
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and err.splitlines() == ["hub: interrupted"], err


async def test_unexpected_errors_are_one_line_with_a_hint(odd_api: str) -> None:
    line = one_line_error(hub("sessions", "list", HUB_API_URL=odd_api, HUB_API_KEY="k"), 1,
                          "unexpected error", "KeyError", "HUB_DEBUG=1")
    path = Path(line.split("traceback in ", 1)[1].split(" ", 1)[0])
    assert "Traceback" in path.read_text()
    path.unlink()
    out = hub("sessions", "list", HUB_API_URL=odd_api, HUB_API_KEY="k", HUB_DEBUG="1")
    assert out.returncode == 1 and "Traceback" in out.stderr and "KeyError" in out.stderr


async def test_asterisk_unreachable_is_one_line() -> None:
    for cmd in ("calls", "trunks"):
        out = hub(cmd, HUB_ARI_URL=f"http://127.0.0.1:{free_port()}")
        one_line_error(out, 4, "ARI", "unreachable")


async def test_bad_setting_is_one_line() -> None:
    one_line_error(hub("sessions", "list", HUB_API_PORT="eighty"), 1, "bad setting", "API_PORT")


# --- machine-readable output ---------------------------------------------------------

async def test_every_listing_prints_json(
    api_server: str, api: Api, email_transport: dict[str, Any], procs: Procs, tmp_path: Path
) -> None:
    env = as_app(api_server, api.key)
    app = str(api.app.app_id)
    procs.worker()
    instruction = tmp_path / "i.json"
    instruction.write_text(json.dumps({"transport": {"type": "email", "subject": "s",
                                                     "message": "m"},
                                       "audience": ["a@example.com"]}))
    out = hub("send", str(instruction), "--json", **env)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 1  # only the created session, as before
    sid = json.loads(out.stdout)["sessionId"]

    listings: dict[tuple[str, ...], type] = {
        ("transports", "list"): list, ("sessions", "list"): list,
        ("sessions", "show", sid): dict, ("sessions", "show", sid, "--follow"): dict,
        ("apps", "keys", "list", app): list, ("apps", "trunks", "list", app): list,
        ("report", sid): dict,
    }
    for args, kind in listings.items():
        out = hub(*args, "--json", **env)
        assert out.returncode == 0 and out.stderr == "", (args, out.stderr)
        assert isinstance(json.loads(out.stdout), kind), args
    show = json.loads(hub("sessions", "show", sid, "--json", **env).stdout)
    assert show["status"] == "completed" and show["counts"] == {"delivered": 1}
    assert [t["id"] for t in json.loads(hub("transports", "list", "--json", **env).stdout)] == [
        email_transport["id"]]
    human = hub("sessions", "list", **env).stdout
    assert sid in human and "sessionId" in human.splitlines()[0]
    out = hub("transports", "add", "--name", "smtp2", "--type", "email", "--json", "--config",
              json.dumps({"host": "127.0.0.1", "port": 25, "from": "a@example.com"}), **env)
    assert json.loads(out.stdout)["name"] == "smtp2", out.stderr


# --- help and completion ----------------------------------------------------------------

def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name)
                yield from _commands(child, (*path, name))


async def test_every_command_has_help_with_examples() -> None:
    commands = list(_commands(build_parser()))
    assert ("sessions", "show") in commands and ("apps", "keys", "revoke") in commands
    top = hub("--help")
    assert top.returncode == 0 and "Examples" in top.stdout and "exit codes" in top.stdout
    for path in commands:
        if len(path) == 1:
            assert f"    {path[0]} " in top.stdout, f"{path[0]} has no one-line description"
        out = hub(*path, "--help")
        assert out.returncode == 0 and "Examples:\n" in out.stdout, path
        assert f"hub {' '.join(path)}" in out.stdout.split("Examples:\n", 1)[1], path


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
async def test_bash_completion_loads_and_completes() -> None:
    env = base_env()
    script = f"source <({' '.join(HUB)} completion bash) && complete -p hub"
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "hub" in out.stdout, out.stderr
    fn = out.stdout.split("-F ", 1)[1].split()[0]
    words = {"hub sess": "sessions", "hub sessions sh": "show", "hub apps keys re": "revoke"}
    for line, expected in words.items():
        probe = (f"source <({' '.join(HUB)} completion bash); COMP_WORDS=({line}); "
                 f"COMP_CWORD={len(line.split()) - 1}; COMP_LINE='{line}'; COMP_POINT={len(line)}; "
                 f"{fn} hub; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        got = subprocess.run(["bash", "-c", probe], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
        assert expected in got.stdout.split(), (line, got.stdout, got.stderr)
    cut = subprocess.run(["bash", "-c", f"{' '.join(HUB)} completion bash | head -1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=60)
    assert cut.stdout.startswith("#") and cut.stderr == "", cut.stderr  # a closed pipe: no noise
    zsh = hub("completion", "zsh")
    assert zsh.returncode == 0 and zsh.stdout.startswith("#compdef hub")


# --- progress -------------------------------------------------------------------------

def _instruction(tmp_path: Path, audience: list[str]) -> Path:
    path = tmp_path / "broadcast.json"
    path.write_text(json.dumps({"transport": {"type": "email", "subject": "Progress",
                                              "message": "hello"}, "audience": audience}))
    return path


def _run_in_pty(args: list[str], env: dict[str, str], *, interrupt_at: bytes | None = None
                ) -> tuple[int, str, str]:
    """Runs the CLI with its stdout on a pseudo-terminal; (exit code, terminal text, stderr).
    With `interrupt_at`, Ctrl-C (SIGINT) once the terminal shows that text."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*HUB, *args], cwd=ROOT, env={**env, "COLUMNS": "150"},
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=_as_at_a_terminal)
    os.close(slave)
    chunks: list[bytes] = []
    started = time.monotonic()
    interrupted = False
    while True:
        if interrupt_at is not None and not interrupted and interrupt_at in b"".join(chunks):
            proc.send_signal(signal.SIGINT)
            interrupted = True
        try:
            import select

            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                chunks.append(os.read(master, 65536))
            elif proc.poll() is not None:
                break
        except OSError:  # EIO: the child closed the terminal
            break
        assert time.monotonic() - started < 90, b"".join(chunks)
    os.close(master)
    proc.wait(10)
    assert proc.stderr is not None
    return proc.returncode, b"".join(chunks).decode(), proc.stderr.read().decode()


async def test_send_draws_a_redrawn_progress_bar_on_a_terminal(
    api_server: str, api: Api, email_transport: dict[str, Any],
    smtp_sink: tuple[int, SmtpSink], procs: Procs, tmp_path: Path
) -> None:
    _, sink = smtp_sink
    sink.delay_s = 0.4
    audience = [f"r{i}@example.com" for i in range(8)]
    procs.worker(HUB_SEND_CONCURRENCY="1")  # one message at a time: the bar moves in steps
    code, screen, err = _run_in_pty(["send", str(_instruction(tmp_path, audience)),
                                     "--interval", "0.2"], base_env(**as_app(api_server, api.key)))
    assert code == 0 and err == "", (code, screen, err)
    frames = [f.replace("\x1b[K", "").strip() for f in screen.split("\r") if f.startswith("[")]
    assert len(frames) >= 3, screen  # redrawn in place, not one line per poll
    percents = [int(f.split("%")[0].split()[-1]) for f in frames]
    assert percents == sorted(percents) and percents[-1] == 100 and len(set(percents)) >= 4, frames
    assert "8/8 100%" in frames[-1] and "delivered=8" in frames[-1]
    assert frames[0].startswith("[") and "]" in frames[0]
    assert "completed in" in screen and len(sink.received) == 8


async def test_send_without_a_terminal_prints_plain_lines_and_exit_3_on_failures(
    api_server: str, api: Api, email_transport: dict[str, Any],
    smtp_sink: tuple[int, SmtpSink], procs: Procs, tmp_path: Path
) -> None:
    _, sink = smtp_sink
    sink.delay_s = 0.3
    procs.worker()
    audience = ["bounce@example.com"] + [f"p{i}@example.com" for i in range(4)]
    out = hub("send", str(_instruction(tmp_path, audience)), "--interval", "0.2",
              **as_app(api_server, api.key))
    assert out.returncode == 3, (out.stdout, out.stderr)
    assert "\r" not in out.stdout and "\x1b" not in out.stdout and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0].startswith("session ") and "5 recipients" in lines[0]
    progress = [line for line in lines[1:-1] if "%" in line]
    assert progress and progress[-1].startswith("5/5 100%"), lines
    assert len(progress) == len(set(line.rsplit("  ", 1)[0] for line in progress))  # no repeats
    assert "completed in" in lines[-1] and "failed=1" in lines[-1] and "delivered=4" in lines[-1]


async def test_ctrl_c_stops_following_not_the_session(
    api_server: str, api: Api, email_transport: dict[str, Any],
    smtp_sink: tuple[int, SmtpSink], procs: Procs, tmp_path: Path
) -> None:
    _, sink = smtp_sink
    sink.delay_s = 0.5
    audience = [f"c{i}@example.com" for i in range(12)]
    env = as_app(api_server, api.key)
    out = hub("send", str(_instruction(tmp_path, audience)), "--no-follow", "--json", **env)
    sid = json.loads(out.stdout)["sessionId"]
    procs.worker(HUB_SEND_CONCURRENCY="1")
    code, screen, err = _run_in_pty(["sessions", "show", sid, "--follow", "--interval", "0.2"],
                                    base_env(**env), interrupt_at=b"/12  ")
    assert code == 130, (screen, err)
    assert err.splitlines() == [f"hub: stopped following session {sid}; it keeps running"
                                f" (hub sessions show {sid} --follow)"], err
    assert "\r[" in screen
    out = hub("sessions", "show", sid, "--follow", "--json", **env)  # follows to the end
    assert out.returncode == 0 and json.loads(out.stdout)["counts"] == {"delivered": 12}
    assert len(sink.received) == 12
