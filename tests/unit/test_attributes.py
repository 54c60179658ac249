"""Route attributes are defined once (announcer.attributes): the state file, the status
answer, the client's words and the configuration all follow that one definition, and a
state file written before it existed still reads back the same."""

from __future__ import annotations

import json
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

# With only files from tests/unit selected, pytest puts tests/unit on sys.path, and
# tests/unit/checks (no __init__.py) would then shadow the real ``checks`` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from announcer import attributes, persist, protocol
from announcer import config as cfg
from announcer import state as sm
from announcer.checks import CHECK_TYPES
from announcer.render import format_attributes

# Written by the code before announcer.attributes existed (persist.encode of that
# version), byte for byte: every attribute set on "web", the defaults on "api".
OLD_STATE_FILE = b"""\
{
 "boot_id": "b0",
 "exabgp": "4242:777",
 "format": 1,
 "inflight": [
  "192.0.2.10/32"
 ],
 "services": {
  "api": {
   "attributes": {
    "as_path_prepend": 0,
    "communities": [],
    "large_communities": [],
    "local_preference": null,
    "med": 100
   },
   "drain_boottime": null,
   "drain_deadline": null,
   "drain_reason": "",
   "operator_drain": false,
   "prefixes": [
    "192.0.2.11/32"
   ],
   "route": "ANNOUNCED"
  },
  "dns": {
   "attributes": null,
   "drain_boottime": null,
   "drain_deadline": null,
   "drain_reason": "",
   "operator_drain": false,
   "prefixes": [],
   "route": "WITHDRAWN"
  },
  "web": {
   "attributes": {
    "as_path_prepend": 2,
    "communities": [
     "65535:0",
     "65001:7"
    ],
    "large_communities": [
     "65001:0:1"
    ],
    "local_preference": 50,
    "med": 1000
   },
   "drain_boottime": 1234.5,
   "drain_deadline": 1700000030.5,
   "drain_reason": "kernel upgrade",
   "operator_drain": true,
   "prefixes": [
    "192.0.2.10/32",
    "2001:db8::10/128"
   ],
   "route": "DRAINING"
  }
 }
}
"""

FULL = sm.RouteAttributes(
    med=1000,
    local_preference=50,
    as_path_prepend=2,
    communities=("65535:0", "65001:7"),
    large_communities=("65001:0:1",),
)


def test_a_state_file_of_the_previous_version_reads_back_equal() -> None:
    """The attributes' JSON keys are those of the state files already on disk."""
    snap = persist.decode(OLD_STATE_FILE)
    assert snap == persist.Snapshot(
        exabgp="4242:777",
        boot_id="b0",
        inflight=("192.0.2.10/32",),
        services={
            "api": persist.ServiceRecord(
                route=sm.Route.ANNOUNCED,
                prefixes=("192.0.2.11/32",),
                attributes=sm.RouteAttributes(med=100),
            ),
            "dns": persist.ServiceRecord(route=sm.Route.WITHDRAWN),
            "web": persist.ServiceRecord(
                route=sm.Route.DRAINING,
                prefixes=("192.0.2.10/32", "2001:db8::10/128"),
                attributes=FULL,
                operator_drain=True,
                drain_reason="kernel upgrade",
                drain_deadline=1700000030.5,
                drain_boottime=1234.5,
            ),
        },
    )
    # Written again: the same JSON, compact now (what an older version reads as well).
    assert json.loads(persist.encode(snap)) == json.loads(OLD_STATE_FILE)
    assert persist.decode(persist.encode(snap)) == snap


def test_the_json_form_reads_leniently() -> None:
    """A missing or mistyped value is the default; anything but an object is no attributes."""
    assert attributes.from_json({}) == sm.RouteAttributes()
    odd = {"med": "100", "local_preference": 2.5, "as_path_prepend": None, "communities": [1]}
    assert attributes.from_json(odd) == sm.RouteAttributes(communities=("1",))
    assert attributes.from_json(None) is None
    assert attributes.from_json([1]) is None
    assert attributes.to_json(None) is None
    assert attributes.from_json(attributes.to_json(FULL)) == FULL


def test_every_form_has_the_fields_of_the_one_definition() -> None:
    """The status answer's TypedDict, the config's table model and the client's words
    name exactly the fields of RouteAttributes, in its order."""
    names = [f.name for f in fields(sm.RouteAttributes)]
    assert [f.name for f in attributes.FIELDS] == names
    assert list(typing.get_type_hints(attributes.AttributesJSON)) == names
    assert protocol.Attributes is attributes.AttributesJSON
    assert list(attributes.to_json(FULL) or {}) == names
    assert list(cfg.Attributes.model_fields) == names
    assert cfg.Attributes.model_validate(attributes.to_json(FULL)).to_route_attributes() == FULL
    assert cfg.Attributes().to_route_attributes() == sm.RouteAttributes()
    labels = [f.spec.label for f in attributes.FIELDS]
    assert format_attributes(attributes.to_json(FULL)).split()[::2] == labels


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"med": 0, "as_path_prepend": 0, "communities": []}, "med 0"),
        ({"as_path_prepend": False, "local_preference": None}, "-"),
        ({"med": 5, "unknown": 1}, "med 5"),
        ("not an object", "-"),
    ],
)
def test_the_client_shows_what_is_set(data: object, text: str) -> None:
    assert format_attributes(data) == text


def test_the_builtin_defaults_live_in_the_state_machine() -> None:
    """The config's built-in attribute tables and other per-service defaults are the
    state machine's own (Policy, Dampening), unchanged from the literal tables of before."""
    assert cfg.BUILTIN_ATTRIBUTES == {
        "announce": {"med": 100},
        "drain": {"med": 1000, "communities": ["65535:0"]},
        "down": {"med": 1000},
    }
    service: dict[str, Any] = {
        "name": "web",
        "prefixes": ["192.0.2.10/32"],
        "checks": [{"type": "file", "path": "/x"}],
    }
    policy = cfg.Service.model_validate(service).policy()
    assert policy == sm.Policy(prefixes=("192.0.2.10/32",), dampening=sm.Dampening())


def test_check_types_come_from_the_spec_union() -> None:
    assert {"http", "tcp", "dns", "command", "file", "process"} == CHECK_TYPES
