"""Tags, selectors and MQTT group names.

A selector is ``key=value`` pairs joined by commas (``hw=jetson-orin,region=eu``);
a device matches when it carries every pair. Groups are the MQTT-safe spelling of
tags (``hw:jetson-orin``, since topic segments allow ``:`` but not ``=``) plus ``all``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ferry.server.core.errors import ValidationFailedError

TAG_KEY = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TAG_VALUE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
DEVICE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ALL_GROUP = "all"
CANARY = ("channel", "canary")


def check_tags(tags: Mapping[str, str], what: str = "tags") -> dict[str, str]:
    """Refuse keys or values that could not become a selector or a topic segment."""
    bad = [f"{k}={v}" for k, v in tags.items()
           if not isinstance(v, str) or not TAG_KEY.match(k) or not TAG_VALUE.match(v)]
    if bad:
        raise ValidationFailedError(
            f"{what}: keys are lower-case names, values [A-Za-z0-9._-]{{1,64}}", {"bad": bad})
    return dict(tags)


def parse_selector(text: str) -> dict[str, str]:
    """``hw=jetson-orin,region=eu`` → ``{"hw": "jetson-orin", "region": "eu"}``; "" → {}."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() in pairs:
            raise ValidationFailedError(f"selector {text!r}: expected key=value pairs, each key "
                                        "once, e.g. hw=jetson-orin,region=eu")
        pairs[key.strip()] = value.strip()
    return check_tags(pairs, "selector")


def format_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def matches(selector: Mapping[str, str], tags: Mapping[str, str]) -> bool:
    return all(tags.get(key) == value for key, value in selector.items())


def selectors_overlap(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Some device (now or later) could match both unless they disagree on a key."""
    return all(b[key] == value for key, value in a.items() if key in b)


def canary_only(selector: Mapping[str, str]) -> bool:
    return selector.get(CANARY[0]) == CANARY[1]


def groups_for(tags: Mapping[str, str]) -> list[str]:
    return [ALL_GROUP] + [f"{k}:{v}" for k, v in sorted(tags.items())]


def announce_groups(selector: Mapping[str, str]) -> list[str]:
    """One group that contains every selected device: one publish per announcement."""
    return groups_for(selector)[1:2] or [ALL_GROUP]
