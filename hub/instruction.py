"""The uniform instruction (DESIGN §2): pydantic models, wire names, and validation.

`parse_instruction` turns a request body into a `ValidInstruction` or raises
`Unprocessable` listing every problem with its wire location.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.alias_generators import to_camel

from hub.config import Settings
from hub.errors import TooLarge, Unprocessable, detail
from hub.net import Guard, check_public_url

TransportType = Literal["email", "sms", "whatsapp", "voice", "slack", "api"]
Trigger = Literal["immediate", "scheduled", "manual"]
MAX_DETAILS = 1000
MAX_RETRIES = 100
# A scheduledTimestamp up to this far in the past is taken as "now" (a client's clock may
# lag ours); older ones are refused, as are ones further ahead than SCHEDULE_AHEAD_MAX.
CLOCK_SKEW = timedelta(seconds=60)
SCHEDULE_AHEAD_MAX = timedelta(days=3660)
T = TypeVar("T")


class WireModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _interval_input(value: Any) -> Any:
    """`"15,60"` or a number of minutes; not `true` (a bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError('expected comma-separated minutes ("15,60,120") or a number')
    return value


class TransportPart(WireModel):
    type: TransportType
    subject: str | None = None
    message: str | None = None
    file_url: str | None = None
    extras: dict[str, Any] = Field(default_factory=dict)



class Options(WireModel):
    trigger: Trigger = "immediate"
    scheduled_timestamp: datetime | None = Field(default=None, description=(
        "ISO-8601; no offset means UTC. Required iff trigger is scheduled. Up to 60 s in the"
        " past is accepted as now (clock skew); earlier, or more than 3660 days ahead, is refused."))
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES, strict=True)
    retry_interval_minutes: Annotated[str | float, BeforeValidator(_interval_input)] = "60"
    webhook_url: str | None = None


    @field_validator("scheduled_timestamp")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)
        return v

    @field_validator("retry_interval_minutes")
    @classmethod
    def _intervals(cls, v: str | float) -> str | float:
        parse_intervals(v)
        return v


class Instruction(WireModel):
    transport: TransportPart
    audience: list[str] = Field(min_length=1)
    options: Options = Field(default_factory=Options)
    xref: str | None = Field(default=None, max_length=255)


@dataclass(frozen=True)
class ValidInstruction:
    """A checked instruction with its audience normalised and de-duplicated."""

    instruction: Instruction
    addresses: list[str]
    duplicates_removed: int
    retry_intervals_s: list[float]
    # Session-wide copies the transport adds to the audience: (address, role), e.g. an
    # email's cc/bcc, each sent once per session.
    copies: list[tuple[str, str]] = field(default_factory=list)


def parse_intervals(value: str | float) -> list[float]:
    """`"15,60,120"` (minutes, decimals allowed) → seconds `[900.0, 3600.0, 7200.0]`."""
    parts = [p.strip() for p in str(value).split(",")]
    try:
        minutes = [float(p) for p in parts]
    except ValueError as exc:
        raise ValueError("comma-separated minutes expected, e.g. \"15,60,120\"") from exc
    if not minutes or any(m < 0 or m != m or m > 525_600 for m in minutes):
        raise ValueError("each interval must be between 0 and 525600 minutes")
    return [m * 60.0 for m in minutes]


def _wire_loc(loc: tuple[int | str, ...]) -> list[int | str]:
    return [p for p in loc if not (isinstance(p, str) and p.startswith("function-"))]


_TRANSPORT = TypeAdapter(TransportPart)
_OPTIONS = TypeAdapter(Options)
_AUDIENCE = TypeAdapter(Annotated[list[Any], Field(min_length=1)])
_XREF = TypeAdapter(Annotated[str | None, Field(max_length=255)])
_MISSING = object()


def _part(adapter: TypeAdapter[T], value: Any, name: str, problems: list[dict[str, Any]]) -> T | None:
    """One part of the instruction checked on its own, its problems added under `name`."""
    if value is _MISSING:
        problems.append(detail([name], "Field required"))
        return None
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        problems += [detail([name, *_wire_loc(e["loc"])], e["msg"])
                     for e in exc.errors(include_url=False)]
        return None


def parse_instruction(
    body: Any, settings: Settings, *, default_region: str | None = None
) -> ValidInstruction:
    """Validate everything and report every problem at once (422), or size limits (413).

    Transport, audience and options are checked independently, so a problem in one part
    never hides a problem in another.
    """
    from hub.transports.registry import spec_for  # transports import this module

    if not isinstance(body, dict):
        raise _invalid([detail([], "expected a JSON object with transport, audience and options")])
    raw_audience = body.get("audience", _MISSING)
    if isinstance(raw_audience, list) and len(raw_audience) > settings.audience_max:
        raise TooLarge(
            f"the audience has {len(raw_audience)} addresses; the limit is "
            f"{settings.audience_max}",
            error_id="audience-too-large",
            details=[detail(["audience"], f"at most {settings.audience_max} addresses")],
        )
    problems = [detail([k], "Extra inputs are not permitted") for k in body if k not in _FIELDS]
    raw_transport = body.get("transport", _MISSING)
    part = _part(_TRANSPORT, raw_transport, "transport", problems)
    type_ = part.type if part else _known_type(raw_transport)
    spec = spec_for(type_) if type_ else None
    if part is not None and spec is not None:
        _check_lengths(part, settings)
        urls: list[tuple[list[str | int], str]] = (
            [(["transport", "fileUrl"], part.file_url)] if part.file_url is not None else [])
        urls += getattr(spec, "content_urls", lambda _: [])(part)  # media, attachments
        problems += [detail(loc, why) for loc, url in urls
                     if (why := check_public_url(url, Guard.of(settings)))]
        problems += spec.validate_content(part)
    audience = _part(_AUDIENCE, raw_audience, "audience", problems)
    normalise = partial(spec.normalize_address, region=default_region) if spec else None
    addresses, dupes = _normalise_audience(audience or [], normalise, problems)
    opts = _part(_OPTIONS, body.get("options", {}), "options", problems)
    if opts is not None:
        problems += _check_options(opts, settings)
    xref = _part(_XREF, body.get("xref"), "xref", problems)
    if problems or part is None or opts is None or audience is None:
        raise _invalid(problems)
    ins = Instruction.model_construct(transport=part, audience=audience, options=opts, xref=xref)
    copies_of = getattr(spec, "copies", None)
    copies = copies_of(part, addresses) if copies_of is not None else []
    return ValidInstruction(ins, addresses, dupes, parse_intervals(opts.retry_interval_minutes),
                            copies)


_FIELDS = frozenset(f.alias or n for n, f in Instruction.model_fields.items())


def _known_type(raw_transport: Any) -> str | None:
    """The transport type when it is valid even though other transport fields are not."""
    type_ = raw_transport.get("type") if isinstance(raw_transport, dict) else None
    return type_ if type_ in get_args(TransportType) else None


def _check_lengths(part: TransportPart, settings: Settings) -> None:
    for name, limit in (("message", settings.message_max_chars),
                        ("subject", settings.subject_max_chars)):
        value = getattr(part, name)
        if value is not None and len(value) > limit:
            raise TooLarge(
                f"transport.{name} has {len(value)} characters; the limit is {limit}",
                error_id="message-too-long",
                details=[detail(["transport", name], f"at most {limit} characters")],
            )


def _check_options(opts: Options, settings: Settings) -> list[dict[str, Any]]:
    problems = []
    if opts.trigger == "scheduled" and opts.scheduled_timestamp is None:
        problems.append(detail(["options", "scheduledTimestamp"], "required when trigger is scheduled"))
    if opts.trigger != "scheduled" and opts.scheduled_timestamp is not None:
        problems.append(detail(["options", "scheduledTimestamp"],
                               "only allowed when trigger is scheduled"))
    elif opts.scheduled_timestamp is not None:
        why = _schedulable(opts.scheduled_timestamp)
        if why:
            problems.append(detail(["options", "scheduledTimestamp"], why))
    if opts.webhook_url is not None:
        why = check_public_url(opts.webhook_url, Guard.of(settings))
        if why:
            problems.append(detail(["options", "webhookUrl"], why))
    return problems


def _schedulable(at: datetime) -> str | None:
    now = datetime.now(UTC)
    if at < now - CLOCK_SKEW:
        return f"is in the past (more than {CLOCK_SKEW.seconds} s before now, {now:%Y-%m-%dT%H:%M:%SZ})"
    if at > now + SCHEDULE_AHEAD_MAX:
        return f"is more than {SCHEDULE_AHEAD_MAX.days} days ahead"
    return None


def _normalise_audience(
    audience: list[Any], normalise: Callable[[str], str] | None, problems: list[dict[str, Any]]
) -> tuple[list[str], int]:
    """Normalised unique addresses (when the transport type is known); each bad one reported."""
    seen: dict[str, None] = {}
    unlisted = 0
    for i, raw in enumerate(audience):
        try:
            if not isinstance(raw, str):
                raise ValueError("Input should be a valid string")
            if normalise is not None:
                seen.setdefault(normalise(raw), None)
        except ValueError as exc:
            if len(problems) < MAX_DETAILS:
                problems.append(detail(["audience", i], str(exc)))
            else:
                unlisted += 1
    if unlisted:
        problems.append(detail(["audience"], f"{unlisted} more invalid addresses not listed"))
    return list(seen), len(audience) - len(seen)


def _invalid(problems: list[dict[str, Any]]) -> Unprocessable:
    summary = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in problems[:5]
    )
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return Unprocessable(
        f"the instruction is invalid: {summary}{more}",
        error_id="invalid-instruction",
        details=problems,
    )
