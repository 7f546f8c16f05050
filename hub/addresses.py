"""Address normalisation per kind: RFC 5322 mailboxes and E.164 phone numbers.

Each function returns the normalised address or raises `ValueError` with a short reason.
"""

from __future__ import annotations

import re
from email.utils import parseaddr

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# Fast path for the common ASCII dot-atom form; everything else goes through email-validator.
_SIMPLE_EMAIL = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_PHONE_JUNK = re.compile(r"[\s().-]")
_DIALABLE = re.compile(r"\+?[0-9]+")


def normalize_email(raw: str) -> str:
    """`Name <a@b.example>` or `a@b.example` → `a@b.example`, lower-cased (mailbox providers
    treat local parts case-insensitively, so case variants are one recipient)."""
    text = raw.strip()
    if "<" in text:
        _, text = parseaddr(text)
        if not text:
            raise ValueError("not a valid email address")
    if len(text) > 254:
        raise ValueError("not a valid email address (longer than 254 characters)")
    if _SIMPLE_EMAIL.fullmatch(text):
        local, _, domain = text.rpartition("@")
        if len(local) > 64:
            raise ValueError("not a valid email address (local part over 64 characters)")
        return f"{local}@{domain}".lower()
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address ({exc})") from exc
    return str(result.normalized).lower()


def normalize_phone(raw: str, default_region: str | None = None) -> str:
    """Any dialable form → E.164 (`+9779812345678`); a default region allows national forms.
    Only ASCII digits with the usual separators: letters (vanity numbers) are refused."""
    text = _PHONE_JUNK.sub("", raw.strip())
    if not _DIALABLE.fullmatch(text):
        # phonenumbers would read letters as keypad digits (+1-800-FLOWERS): a typo or a
        # vanity form is not what the caller may think it is, so it is refused.
        if any(ch.isalpha() for ch in text):
            raise ValueError("not a valid phone number (letters are not allowed; digits only)")
        raise ValueError("not a valid phone number (digits, spaces, '+', '-', '.', '(' and ')'"
                         " only)")
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+") and not default_region:
        raise ValueError("not a valid phone number (E.164 expected, e.g. +14155550100)")
    try:
        number = phonenumbers.parse(text, None if text.startswith("+") else default_region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a valid phone number ({exc._msg})") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if not _E164.fullmatch(e164):
        raise ValueError("not a valid phone number")
    return str(e164)
