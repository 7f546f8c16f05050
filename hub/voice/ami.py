"""An AMI client on panoramisk: log in with a time limit, run CLI commands (`Command`) and
list actions (`PJSIPShowEndpoints`, `PJSIPShowContacts`), and reconnect by itself when
Asterisk restarts (panoramisk reconnects every `reconnect_timeout` seconds and logs in
again). `connected` says whether it is logged in now (for the metrics).

The parsing of panoramisk's answers is kept in pure functions (`command_output`,
`events_of`): panoramisk 1.4 gives a Command's text as `Output` (a str or a list of
lines), older versions as `content` or a list of messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from panoramisk import Manager

from hub.config import Settings

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 10.0


class AmiError(Exception):
    """AMI could not be reached, refused the login, or did not answer in time."""


class AmiUnreachable(AmiError, ConnectionError):
    """Nothing answered at AMI's address (the CLI exits 4, as for an unreachable API)."""


def command_output(reply: Any) -> str:
    """The CLI text of a `Command` action's reply (a Message or a list of them)."""
    messages = reply if isinstance(reply, list) else [reply]
    lines: list[str] = []
    for msg in messages:
        out = _get(msg, "Output") or _get(msg, "content")
        if isinstance(out, list):
            lines.extend(str(x) for x in out)
        elif out:
            lines.extend(str(out).split("\n"))
    text = "\n".join(lines)
    if text.endswith("--END COMMAND--"):  # Asterisk < 14 ends the text with this line
        text = text[: -len("--END COMMAND--")]
    return text.rstrip("\n")


def command_failed(reply: Any) -> str | None:
    """Asterisk's reason when a `Command` failed (e.g. an unknown command), else None."""
    first = reply[0] if isinstance(reply, list) and reply else reply
    if str(_get(first, "Response") or "").lower() == "error":
        text = command_output(reply)
        return text.splitlines()[0] if text else str(_get(first, "Message") or "command failed")
    text = command_output(reply)
    if text.startswith("No such command"):
        return text.splitlines()[0]
    return None


def events_of(reply: Any, event: str) -> list[dict[str, str]]:
    """The `event` messages of a list action's reply, as plain dicts."""
    messages = reply if isinstance(reply, list) else [reply]
    return [dict(_items(m)) for m in messages if str(_get(m, "Event") or "") == event]


def _get(msg: Any, key: str) -> Any:
    if isinstance(msg, Mapping):
        for k, v in msg.items():
            if str(k).lower() == key.lower():
                return v
    return getattr(msg, key, None)  # e.g. panoramisk's Message.content


def _items(msg: Any) -> Iterable[tuple[str, str]]:
    if isinstance(msg, Mapping):
        return ((str(k), v if isinstance(v, str) else str(v)) for k, v in msg.items())
    return ()


class Ami:
    def __init__(self, host: str, port: int, user: str, password: str, *,
                 timeout_s: float = 5.0, reconnect_s: int = 2) -> None:
        self.address = f"{host}:{port}"
        self.timeout_s = timeout_s
        self.manager = Manager(host=host, port=port, username=user, secret=password,
                               events="off", reconnect_timeout=reconnect_s,
                               ping_delay=reconnect_s, ping_interval=reconnect_s,
                               log=log.getChild("manager"))

    @property
    def connected(self) -> bool:
        m = self.manager
        return bool(m._connected and m.authenticated)

    async def connect(self) -> None:
        """Connect and log in, or raise AmiError (refused, wrong password, no answer)."""
        self.manager.loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(self.manager.connect(), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            self.close()
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise AmiUnreachable(f"AMI at {self.address} is unreachable: "
                           f"{why or 'no answer in time'}") from None
        login = self.manager.authenticated_future
        try:
            reply = await asyncio.wait_for(asyncio.shield(login), self.timeout_s)
        except (TimeoutError, OSError) as exc:
            self.close()
            raise AmiError(f"AMI at {self.address} did not answer the login: "
                           f"{exc or 'no answer in time'}") from None
        if not reply.success:
            self.close()
            raise AmiError(f"AMI at {self.address} refused the login of user "
                           f"{self.manager.config['username']}: {_get(reply, 'Message')}")

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait until logged in again (after Asterisk restarted); False if not in time."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while loop.time() < end:
            if self.connected:
                return True
            await asyncio.sleep(0.2)
        return self.connected

    async def _send(self, action: dict[str, str], **kw: Any) -> Any:
        if not self.connected:
            raise AmiError(f"AMI at {self.address} is not connected")
        try:
            return await asyncio.wait_for(self.manager.send_action(action, **kw), REPLY_TIMEOUT_S)
        except TimeoutError:
            raise AmiError(f"AMI at {self.address} did not answer {action['Action']}") from None

    async def command(self, text: str) -> str:
        """Run an Asterisk CLI command; its output text. AmiError if Asterisk refused it."""
        reply = await self._send({"Action": "Command", "Command": text})
        failed = command_failed(reply)
        if failed:
            raise AmiError(f"Asterisk: {failed}")
        return command_output(reply)

    async def setvar(self, channel: str, variable: str, value: str) -> None:
        """Set a variable on a live channel (by name, e.g. PJSIP/trunk-00000001). Unlike
        ARI's, it is not queued behind the channel's Stasis work (a playback)."""
        reply = await self._send({"Action": "Setvar", "Channel": channel,
                                  "Variable": variable, "Value": value})
        if str(_get(reply, "Response") or "").lower() != "success":
            raise AmiError(f"Asterisk: {_get(reply, 'Message') or 'Setvar failed'}")

    async def endpoints(self) -> list[dict[str, str]]:
        return events_of(await self._send({"Action": "PJSIPShowEndpoints"}),
                         "EndpointList")

    async def contacts(self) -> list[dict[str, str]]:
        """Dynamic (registered) contacts; Asterisk answers an error when there are none."""
        return events_of(await self._send({"Action": "PJSIPShowContacts"}), "ContactList")

    async def endpoint_contacts(self, endpoint: str) -> list[dict[str, str]]:
        """An endpoint's contacts, static ones too, with their qualify status and RTT."""
        reply = await self._send({"Action": "PJSIPShowEndpoint", "Endpoint": endpoint})
        return events_of(reply, "ContactStatusDetail")

    def close(self) -> None:
        """Stop, and stop reconnecting."""
        m = self.manager
        m.connection_lost = lambda exc: None  # no reconnect once closed
        m.connection_made = lambda f: f.exception() if not f.cancelled() else None
        m.close()


async def watch(settings: Settings, report: Callable[[bool], None], every_s: float = 5.0) -> None:
    """Keep one AMI login for as long as `hub voice` runs and `report(connected)` every
    `every_s` seconds (the `hub_ami_connected` gauge); a refused or lost login is retried
    (panoramisk reconnects a dropped connection by itself)."""
    ami: Ami | None = None
    try:
        while True:
            if ami is None:
                ami = Ami(settings.ami_host, settings.ami_port, settings.ami_user,
                          settings.ami_password)
                try:
                    await ami.connect()
                except AmiError as exc:
                    log.debug("AMI watch: %s", exc)
                    ami = None
            report(ami is not None and ami.connected)
            await asyncio.sleep(every_s)
    finally:
        if ami is not None:
            ami.close()
