"""The operator CLI as scripts use it: machine-readable output and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hub.dev.smtp import SmtpSink
from tests.conftest import ROOT, Procs, base_env

pytestmark = pytest.mark.e2e


def hub(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hub.cli.main", *args], cwd=ROOT,
                          env=base_env(**env), capture_output=True, text=True, timeout=120)


async def test_cli_round_trip(
    api_server: str, db: Any, smtp_sink: tuple[int, SmtpSink], procs: Procs, tmp_path: Path
) -> None:
    port, sink = smtp_sink
    out = hub("apps", "create", "cli-app", "--json")
    assert out.returncode == 0, out.stderr
    app = json.loads(out.stdout)
    assert set(app) == {"appId", "apiKey", "webhookSecret"}
    assert app["webhookSecret"].startswith("whsec_")
    env = {"HUB_API_URL": api_server, "HUB_API_KEY": app["apiKey"]}

    out = hub("transports", "add", "--name", "smtp", "--type", "email", "--config",
              json.dumps({"host": "127.0.0.1", "port": port, "from": "a@example.com"}), **env)
    assert out.returncode == 0, out.stderr
    listed = hub("transports", "list", "--json", **env)
    assert [t["name"] for t in json.loads(listed.stdout)] == ["smtp"]

    procs.worker()
    instruction = tmp_path / "broadcast.json"
    instruction.write_text(json.dumps({
        "transport": {"type": "email", "subject": "CLI", "message": "From the CLI"},
        "audience": ["one@example.com", "two@example.com"]}))
    out = hub("send", str(instruction), "--json", **env)
    assert out.returncode == 0, out.stderr
    created = json.loads(out.stdout.splitlines()[0])
    sid = created["sessionId"]
    assert {r.rcpt for r in sink.received} == {"one@example.com", "two@example.com"}

    out = hub("sessions", "show", sid, "--json", **env)
    assert json.loads(out.stdout)["status"] == "completed"
    out = hub("sessions", "list", **env)
    assert sid in out.stdout
    out = hub("report", sid, "--csv", **env)
    rows, summary = out.stdout.split("\n\n")
    lines = rows.splitlines()
    assert lines[0].startswith("address,status,attempts,outcome")
    assert len(lines) == 3 and all(",delivered," in line for line in lines[1:])
    assert "byStatus,delivered,2" in summary.splitlines()
    out = hub("report", sid, **env)
    assert "by status:  delivered 2" in out.stdout

    out = hub("sessions", "cancel", sid, **env)
    assert out.returncode == 1 and "HTTP 409" in out.stderr and "Traceback" not in out.stderr


async def test_cli_errors_are_messages_not_tracebacks(api_server: str, db: Any,
                                                      tmp_path: Path) -> None:
    out = hub("sessions", "list", HUB_API_URL=api_server)
    assert out.returncode != 0 and "API key is needed" in out.stderr
    out = hub("send", str(tmp_path / "missing.json"), HUB_API_URL=api_server, HUB_API_KEY="k")
    assert out.returncode == 1 and "No such file" in out.stderr and "Traceback" not in out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"transport": {"type": "email"}, "audience": ["x"]}))
    out = hub("send", str(bad), HUB_API_URL=api_server, HUB_API_KEY="hub_nope")
    assert out.returncode == 1 and "HTTP 401" in out.stderr
