"""Tags, selectors and MQTT group names.

A selector is terms joined by commas: ``key=value`` or the set ``key in (v1,v2)``
(``hw in (x86_64,aarch64),region=eu``); a device matches when each term holds (its
tag has that value, or one of the set's). Stored as JSON: a string per plain term,
a sorted list per set. Groups are the MQTT-safe spelling of
tags (``hw:jetson-orin``, since topic segments allow ``:`` but not ``=``) plus ``all``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sqlalchemy import ColumnElement
from sqlmodel import col

from ferry.server.core.errors import ValidationFailedError
from ferry.server.fleet.tables import Device

TAG_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TAG_VALUE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEVICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ALL_GROUP = "all"
CANARY = ("channel", "canary")

SelectorValue = str | list[str]
Selector = dict[str, SelectorValue]


def check_tags(tags: Mapping[str, str], what: str = "tags") -> dict[str, str]:
    """Refuse keys or values that could not become a selector or a topic segment."""
    bad = [
        f"{k}={v}"
        for k, v in tags.items()
        if not isinstance(v, str) or not TAG_KEY.match(k) or not TAG_VALUE.match(v)
    ]
    if bad:
        raise ValidationFailedError(
            f"{what}: keys are lower-case names, values [A-Za-z0-9._-]{{1,64}}", {"bad": bad}
        )
    return dict(tags)


# One term of a selector: ``key=value`` or ``key in (v1,v2,…)``, then a comma or the end.
_TERM = re.compile(r"\s*([^\s=,()]+)\s*(?:=\s*([^\s,()]*)|\s+in\s*\(([^()]*)\))\s*(?:,|$)")


def parse_selector(text: str) -> Selector:
    """``hw in (aarch64,x86_64),region=eu`` → ``{"hw": ["aarch64", "x86_64"], "region": "eu"}``.

    A set of one value is that value; "" → {} (every device).
    """
    selector: Selector = {}
    pos, text = 0, text.strip()
    while pos < len(text):
        term = _TERM.match(text, pos)
        if term is None or term.group(1) in selector:
            raise ValidationFailedError(
                f"selector {text!r}: expected key=value or key in (v1,v2) terms, each key "
                "once, joined by commas, e.g. hw in (x86_64,aarch64),region=eu"
            )
        key, value, options = term.groups()
        values = sorted({v.strip() for v in options.split(",")}) if options is not None else [value]
        selector[key] = values[0] if len(values) == 1 else values
        pos = term.end()
    for key, vs in selector.items():
        for one in _values(vs):
            check_tags({key: one}, "selector")
    return selector


def _values(value: SelectorValue) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def selector_values(selector: Mapping[str, SelectorValue], key: str) -> list[str] | None:
    """The values ``key`` may take (None: any) — e.g. to filter ``hw`` in SQL."""
    return _values(selector[key]) if key in selector else None


def hardware_filter(selector: Mapping[str, SelectorValue]) -> list[ColumnElement[bool]]:
    """The SQL condition for the ``hw`` term (the device's hardware is indexed), if any."""
    values = selector_values(selector, "hw")
    return [] if values is None else [col(Device.hardware).in_(values)]


def format_selector(selector: Mapping[str, SelectorValue]) -> str:
    return ",".join(
        f"{k}={v}" if isinstance(v, str) else f"{k} in ({','.join(v)})"
        for k, v in sorted(selector.items())
    )


def matches(selector: Mapping[str, SelectorValue], tags: Mapping[str, str]) -> bool:
    return all(tags.get(key) in _values(value) for key, value in selector.items())


def selectors_overlap(a: Mapping[str, SelectorValue], b: Mapping[str, SelectorValue]) -> bool:
    """Some device (now or later) could match both unless, for some key, no value fits both."""
    return all(set(_values(b[key])) & set(_values(value)) for key, value in a.items() if key in b)


def canary_only(selector: Mapping[str, SelectorValue]) -> bool:
    return selector.get(CANARY[0]) == CANARY[1]


def groups_for(tags: Mapping[str, str]) -> list[str]:
    return [ALL_GROUP] + [f"{k}:{v}" for k, v in sorted(tags.items())]


def announce_groups(selector: Mapping[str, SelectorValue]) -> list[str]:
    """Groups that together contain every selected device: one publish per group.

    One group for a selector with a plain ``key=value`` term; one per value of a set
    term (``hw in (aarch64,x86_64)`` → ``hw:aarch64``, ``hw:x86_64``) when it has none;
    ``all`` for the empty selector.
    """
    for key, value in sorted(selector.items()):
        if isinstance(value, str):
            return [f"{key}:{value}"]
    for key, value in sorted(selector.items()):
        return [f"{key}:{v}" for v in value]
    return [ALL_GROUP]
