"""Parsing panoramisk's answers to AMI actions, and the operator's hang-up rule."""

from __future__ import annotations

from panoramisk.message import Message

from hub.cli.asterisk import contact_view
from hub.results import Result
from hub.retry import Decision
from hub.voice.ami import command_failed, command_output, events_of
from hub.voice.calls import operator_decision


def msg(content: str = "", **fields: object) -> Message:
    return Message(fields, content=content)  # content: where older versions put the text


def test_command_output_as_a_string_a_list_or_content() -> None:
    text = "Channel  Location\n0 active channels"
    assert command_output(msg(Response="Success", Output=text)) == text
    assert command_output(msg(Response="Success", Output=text.split("\n"))) == text
    old = msg(Response="Follows", content=text + "\n--END COMMAND--")
    assert command_output(old) == text
    assert command_output([msg(Response="Success", Output=["a", "b"]), msg(Output="c")]) \
        == "a\nb\nc"
    assert command_failed(msg(Response="Success", Output=text)) is None


def test_a_failed_command_says_why() -> None:
    unknown = msg(Response="Error", Message="Command output follows",
                  Output="No such command 'x y' (type 'core show help x y' for other)")
    assert command_failed(unknown) == "No such command 'x y' (type 'core show help x y' for other)"
    assert command_failed(msg(Response="Error", Message="Permission denied")) \
        == "Permission denied"
    assert command_failed(msg(Response="Follows", content="No such command 'z'")) \
        == "No such command 'z'"


def test_events_of_a_list_action() -> None:
    reply = [msg(Response="Success", EventList="start", Message="follows"),
             msg(Event="ContactStatusDetail", URI="sip:127.0.0.1:5072", Status="Reachable",
                 RoundtripUsec="1520"),
             msg(Event="EndpointDetail", ObjectName="trunk"),
             msg(Event="EndpointDetailComplete", EventList="Complete")]
    [found] = events_of(reply, "ContactStatusDetail")
    assert found["URI"] == "sip:127.0.0.1:5072" and found["RoundtripUsec"] == "1520"
    assert events_of(msg(Response="Error", Message="No Contacts found"), "ContactList") == []


def test_contact_view() -> None:
    assert contact_view([{"URI": "sip:a", "Status": "Reachable", "RoundtripUsec": "1520"},
                         {"URI": "sip:b", "Status": "NonQualified", "RoundtripUsec": "N/A"}]) \
        == {"contact": "sip:a, sip:b", "qualify": "Reachable, NonQualified",
            "rttMs": "1.5, -"}
    assert contact_view([]) == {"contact": None, "qualify": None, "rttMs": None}


def test_operator_hangup_stops_further_attempts() -> None:
    retry = Decision("retry_scheduled", 60)
    missed = Result("answered", retryable=True)
    heard = Result("answered", delivered=True)
    assert operator_decision("operator", missed, retry) == Decision("cancelled")
    assert operator_decision("operator", heard, Decision("delivered")) == Decision("delivered")
    assert operator_decision("operator", missed, Decision("failed")) == Decision("cancelled")
    assert operator_decision("operator-retry", missed, retry) == retry
    assert operator_decision(None, missed, retry) == retry
