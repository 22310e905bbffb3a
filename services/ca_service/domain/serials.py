"""Certificate serial numbers: generation from a CSPRNG, the canonical text form, and parsing operator input."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from services.ca_service.domain.errors import InvalidSerial

SERIAL_BITS = 159
"""159 random bits keep the DER INTEGER positive and within RFC 5280's 20 octets."""

MAX_SERIAL: int = 2**SERIAL_BITS - 1
"""The largest serial this CA issues or accepts (any positive 20-octet INTEGER)."""

RandomBytes = Callable[[int], bytes]
"""Returns n bytes from a CSPRNG (os.urandom in production; tests inject a fixed source)."""

_HEX_RE = re.compile(r"(?:0[xX])?[0-9a-fA-F]+")
_DEC_RE = re.compile(r"[0-9]+")


def new_serial(random_bytes: RandomBytes = os.urandom) -> int:
    """Draw a fresh serial: 159 bits of CSPRNG output, never zero.

    The use case reserves it in the store (create-if-absent) before anything is signed with it.
    """
    while True:
        serial = int.from_bytes(random_bytes(20), "big") & MAX_SERIAL
        if serial:
            return serial


def serial_hex(serial: int) -> str:
    """Return the canonical text of a serial: lower-case hex without prefix (used as the store key)."""
    return format(check_serial(serial), "x")


def check_serial(serial: int) -> int:
    """Return `serial` if it is a positive integer of at most 20 DER octets."""
    if isinstance(serial, bool) or not isinstance(serial, int) or not 0 < serial <= MAX_SERIAL:
        raise InvalidSerial(
            "serial number out of range", fields={"serial": "must be a positive integer of at most 20 octets"}
        )
    return serial


def parse_serial(text: str) -> int:
    """Read a serial given as hex or decimal text.

    Hex is "0x"-prefixed, colon-separated ("1a:2b:..."), or contains a letter a-f; digits alone are decimal.
    Whitespace around the text is ignored. Anything else raises InvalidSerial naming the field "serial".
    """
    if not isinstance(text, str):
        raise InvalidSerial("serial number must be text", fields={"serial": "must be hex or decimal text"})
    value = text.strip()
    if ":" in value:
        value = "0x" + value.replace(":", "")
    try:
        if len(value) > 128:  # 20 octets need at most 49 decimal digits or 59 colon-separated hex characters
            raise ValueError(value)
        if _DEC_RE.fullmatch(value):
            number = int(value, 10)
        elif _HEX_RE.fullmatch(value):
            number = int(value.removeprefix("0x").removeprefix("0X"), 16)
        else:
            raise ValueError(value)
    except ValueError:
        raise InvalidSerial(
            f"{text[:64]!r} is not a serial number",
            fields={"serial": "must be hex (0x..., aa:bb:..., or containing a-f) or decimal digits"},
        ) from None
    return check_serial(number)
