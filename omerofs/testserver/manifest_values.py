"""Conversion of manifest values (YAML scalars) into OMERO model values.

Each model field has a type in the OMERO model (see `schema`). These functions
turn the value written in the manifest into that type. The types are `RString`,
`RDouble`, `RTime` (milliseconds since the epoch), packed RGBA colours in `RInt`,
units (`Length`, `Time`, ...) and sizes such as `6 GiB`.
"""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any

import omero
import omero.model
from omero.rtypes import rbool, rdouble, rfloat, rint, rlong, rstring, rtime

from omerofs.testserver import schema


class ManifestError(ValueError):
    """Raised when a manifest is invalid; the message names the entry and the problem."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.I)
_SIZE_FACTORS = {
    None: 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def parse_size(value: Any, where: str) -> int:
    """Return a byte count from an integer or a string such as `6 GiB` or `512 KiB`."""
    if isinstance(value, bool):
        raise ManifestError(f"{where}: invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ManifestError(f"{where}: size must not be negative, got {value}")
        return value
    match = _SIZE_RE.match(str(value))
    if match is None:
        raise ManifestError(f"{where}: invalid size {value!r}; write bytes or e.g. '6 GiB'")
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _SIZE_FACTORS[unit])


def parse_time_ms(value: Any, where: str) -> int:
    """Return milliseconds since the epoch from a YAML timestamp, ISO 8601 string or number."""
    if isinstance(value, bool):
        raise ManifestError(f"{where}: invalid time {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
        value = datetime.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError(f"{where}: invalid time {value!r}; use ISO 8601 such as 2024-05-01T12:00:00Z") from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return int(value.timestamp() * 1000)
    raise ManifestError(f"{where}: invalid time {value!r}")


def parse_colour(value: Any, where: str) -> tuple[int, int, int, int]:
    """Return (red, green, blue, alpha) from `#RRGGBB` or `#RRGGBBAA`."""
    text = str(value).strip()
    if not re.fullmatch(r"#[0-9A-Fa-f]{6}([0-9A-Fa-f]{2})?", text):
        raise ManifestError(f"{where}: invalid colour {value!r}; write #RRGGBB or #RRGGBBAA")
    red, green, blue = int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
    alpha = int(text[7:9], 16) if len(text) == 9 else 255
    return red, green, blue, alpha


def packed_colour(value: Any, where: str) -> int:
    """Return a colour as OMERO packs it into a signed 32-bit RGBA integer (shapes, wells)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    red, green, blue, alpha = parse_colour(value, where)
    packed = (red << 24) | (green << 16) | (blue << 8) | alpha
    return packed - (1 << 32) if packed >= 1 << 31 else packed


def make_unit(type_name: str, value: Any, where: str) -> Any:
    """Return a unit value (`LengthI`, `TimeI`, ...) from a number, `{value, unit}` or `"0.5 µm"`.

    A bare number takes the default unit of `schema.UNIT_DEFAULTS`.
    """
    implementation = getattr(omero.model, type_name + "I")
    unit_name = schema.UNIT_DEFAULTS[type_name]
    amount: Any = value

    if isinstance(value, dict):
        unknown = set(value) - {"value", "unit"}
        if unknown or "value" not in value:
            raise ManifestError(f"{where}: a {type_name} needs 'value' and optional 'unit', got {sorted(value)}")
        amount = value["value"]
        unit_name = _unit_name(implementation, str(value.get("unit", unit_name)), where)
    elif isinstance(value, str):
        parts = value.strip().split(None, 1)
        amount = parts[0]
        if len(parts) == 2:
            unit_name = _unit_name(implementation, parts[1], where)

    try:
        number = float(amount)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: invalid {type_name} {value!r}") from None
    return implementation(number, unit_name)


def _unit_name(implementation: type, text: str, where: str) -> str:
    symbols = getattr(implementation, "SYMBOLS", {})
    if text.upper() in symbols:
        return text.upper()
    for name, symbol in symbols.items():
        if symbol == text or (text == "um" and symbol == "µm"):
            return name
    raise ManifestError(f"{where}: unknown unit {text!r}; known: {', '.join(sorted(symbols))}")


def make_scalar(type_name: str, value: Any, where: str, field_name: str = "") -> Any:
    """Return the rtype (or plain value) for a scalar field of the given type."""
    if value is None:
        return None
    try:
        if type_name == "RString":
            if isinstance(value, (datetime.date, datetime.datetime)):
                value = value.isoformat()
            return rstring(str(value))
        if type_name == "RInt":
            if field_name.lower().endswith("color") or field_name.lower().endswith("colour"):
                return rint(packed_colour(value, where))
            return rint(_integer(value))
        if type_name == "RLong":
            return rlong(_integer(value))
        if type_name == "RDouble":
            return rdouble(float(value))
        if type_name == "RFloat":
            return rfloat(float(value))
        if type_name == "RBool":
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return rbool(value)
        if type_name == "RTime":
            return rtime(parse_time_ms(value, where))
        if type_name == "bytes":
            return base64.b64decode(str(value), validate=True)
    except (TypeError, ValueError) as error:
        raise ManifestError(f"{where}: invalid {type_name} value {value!r}: {error}") from None
    raise ManifestError(f"{where}: fields of type {type_name} cannot be set from the manifest")


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    return int(value)


def hex_or_text_bytes(marker: dict, where: str) -> bytes:
    """Return the bytes of a synthetic-file marker given as `hex:` or `text:`."""
    if ("hex" in marker) == ("text" in marker):
        raise ManifestError(f"{where}: a marker needs exactly one of 'hex' or 'text'")
    if "hex" in marker:
        try:
            return bytes.fromhex(str(marker["hex"]))
        except ValueError:
            raise ManifestError(f"{where}: invalid hex {marker['hex']!r}") from None
    return str(marker["text"]).encode("utf-8")
