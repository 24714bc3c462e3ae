"""Fleet and rollout methods of the SDK, mixed into `FerryClient` (docs/rollouts.md).

Devices, enrolment tokens, rollouts and their actions, alias bindings and sync
status. Status answers are returned as the server's JSON (documented shape), since
they are read by people and dashboards rather than passed back to the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ferry.client._models import _Record
from ferry.protocol.gates import GatePolicy

ROLLOUT_ACTIONS = ("pause", "resume", "advance", "cancel", "rollback")


@dataclass(frozen=True)
class EnrollmentToken(_Record):
    """A device enrolment token; ``token`` (the secret) is only set in the answer to a create."""

    id: int
    namespace: str
    name: str
    max_uses: int | None
    uses: int
    expires_at: str | None
    tags: dict[str, str] = field(default_factory=dict)
    created_by: str = ""
    created_at: str = ""
    revoked_at: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class Device(_Record):
    """An enrolled device; ``history`` (newest first) is filled by `get_device`."""

    id: str
    namespace: str
    hardware: str
    agent_version: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    enrolled_at: str = ""
    last_seen_at: str | None = None
    revoked_at: str | None = None
    desired_sequence: int = 0
    slots: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Rollout(_Record):
    """A rollout; ``wave`` is the current wave, 1 for the first, 0 until it first runs."""

    id: str
    namespace: str
    model: str
    version: int
    state: str
    wave: int
    waves: list[int]
    slot: str = "main"
    selector: str = ""
    manifest_sha256: str = ""
    wave_seed: str = ""  # `ferry.protocol.waves.wave_index(wave_seed, device_id, waves)`
    wave_started_at: str | None = None
    reason: str = ""
    gates: dict[str, Any] = field(default_factory=dict)
    auto_rollback: bool = False
    start_at: str | None = None
    created_by: str = ""
    created_at: str = ""
    updated_at: str = ""
    # Only in the answer to a rollback: {returning, without_previous,
    # without_previous_devices, stays_on} — who goes back, who has nothing to go back to.
    rollback: dict[str, Any] | None = None


@dataclass(frozen=True)
class RolloutMember(_Record):
    """One device of a rollout: where it is (``wave`` is 1-based), since when, and why it failed.

    ``error_message`` is the device's own account (the probe's output for a probe
    failure), or the server's for a device that timed out.
    """

    device_id: str
    wave: int
    state: str
    hardware: str = ""
    since: str = ""
    time_in_state_s: int = 0
    last_report_at: str | None = None
    attempts: int = 0
    from_version: int | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class RolloutMembersPage(_Record):
    """One page of `FerryClient.rollout_devices`; pass ``next_cursor`` back for the next."""

    rollout_id: str
    total: int
    devices: list[RolloutMember]
    next_cursor: str | None = None
    at: str = ""

    @classmethod
    def parse(cls, data: dict[str, Any]) -> RolloutMembersPage:
        return cls(
            rollout_id=data["rollout_id"],
            total=data["total"],
            at=data.get("at", ""),
            next_cursor=data.get("next_cursor"),
            devices=[RolloutMember.from_json(d) for d in data["devices"]],
        )


@dataclass(frozen=True)
class RolloutBinding(_Record):
    """Moving ``alias`` of ``namespace/model`` plans a rollout at ``selector``."""

    namespace: str
    model: str
    alias: str
    selector: str
    template: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    created_at: str = ""


def _seg(value: object) -> str:
    return quote(str(value), safe="")


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def exponential_waves(start: int, factor: float, cap: int | None = None) -> list[int]:
    """Cumulative wave percentages that grow by ``factor`` from ``start`` to 100, each wave
    adding at most ``cap`` points: ``(1, 3)`` → 1,3,9,27,81,100; ``(1, 3, 20)`` →
    1,3,9,27,47,67,87,100 (AWS IoT Jobs' exponential rollout, in waves)."""
    if not 1 <= start <= 100 or factor <= 1 or (cap is not None and cap < 1):
        raise ValueError("exponential waves need 1 <= start <= 100, factor > 1, cap >= 1")
    waves = [start]
    while waves[-1] < 100:
        grown = max(waves[-1] + 1, round(waves[-1] * factor))
        if cap is not None:
            grown = min(grown, waves[-1] + cap)
        waves.append(min(grown, 100))
    if len(waves) > 20:
        raise ValueError(f"{len(waves)} waves (at most 20): raise the start, factor or cap")
    return waves


def _rollout_body(
    namespace: str,
    model: str,
    version: int | str,
    *,
    selector: str,
    waves: Sequence[int],
    slot: str,
    gates: GatePolicy | None = None,
    **options: Any,
) -> dict[str, Any]:
    body = {
        "namespace": namespace,
        "model": model,
        "version": str(version),
        "selector": selector,
        "waves": list(waves),
        "slot": slot,
        **options,
        **(gates or GatePolicy()).to_dict(),
    }
    return {k: v for k, v in body.items() if v is not None or k.startswith("max_failure")}


class FleetMixin:
    """Fleet methods; `FerryClient` provides ``_json`` and ``_send``."""

    _json: Callable[..., Any]
    _send: Callable[..., Any]

    # --- enrolment tokens -------------------------------------------------------------

    def create_enrollment_token(
        self,
        namespace: str,
        name: str,
        *,
        max_uses: int | None = 1,
        expires_in_s: int | None = None,
        expires_at: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> EnrollmentToken:
        """One-time by default; ``max_uses=None`` allows any number until it expires."""
        body = {
            "namespace": namespace,
            "name": name,
            "max_uses": max_uses,
            "expires_in_s": expires_in_s,
            "expires_at": expires_at,
            "tags": dict(tags or {}),
        }
        body = {k: v for k, v in body.items() if v is not None or k == "max_uses"}
        return EnrollmentToken.from_json(self._json("POST", "/enrollment-tokens", json=body))

    def list_enrollment_tokens(self, namespace: str | None = None) -> list[EnrollmentToken]:
        params = _drop_none({"namespace": namespace})
        return [
            EnrollmentToken.from_json(t)
            for t in self._json("GET", "/enrollment-tokens", params=params)
        ]

    def revoke_enrollment_token(self, token_id: int) -> None:
        self._send("DELETE", f"/api/v1/enrollment-tokens/{_seg(token_id)}")

    # --- devices ----------------------------------------------------------------------

    def list_devices(
        self,
        namespace: str | None = None,
        *,
        selector: str = "",
        include_revoked: bool = False,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[Device]:
        params = _drop_none(
            {
                "namespace": namespace,
                "selector": selector or None,
                "include_revoked": include_revoked,
                "limit": limit,
                "offset": offset,
            }
        )
        return [Device.from_json(d) for d in self._json("GET", "/devices", params=params)]

    def get_device(self, device_id: str, *, history: int = 50) -> Device:
        return Device.from_json(
            self._json("GET", f"/devices/{_seg(device_id)}", params={"history": history})
        )

    def tag_device(
        self, device_id: str, add: Mapping[str, str] | None = None, remove: Sequence[str] = ()
    ) -> Device:
        body = {"add": dict(add or {}), "remove": list(remove)}
        return Device.from_json(self._json("POST", f"/devices/{_seg(device_id)}/tags", json=body))

    def revoke_device(self, device_id: str) -> Device:
        """The device's credential stops working at once; its broker login goes too."""
        return Device.from_json(self._json("POST", f"/devices/{_seg(device_id)}/revoke"))

    # --- rollouts ---------------------------------------------------------------------

    def create_rollout(
        self,
        namespace: str,
        model: str,
        version: int | str,
        *,
        selector: str = "",
        waves: Sequence[int] = (1, 10, 50, 100),
        slot: str = "main",
        gates: GatePolicy | None = None,
        auto_rollback: bool = False,
        start_at: str | None = None,
        start_paused: bool = False,
        skip_incompatible: bool = False,
        allow_empty: bool = False,
    ) -> Rollout:
        """Roll ``version`` (a number or an alias) out to the devices ``selector`` matches.

        ``selector``: ``key=value`` and ``key in (v1,v2)`` terms joined by commas. 409
        when the plan has a refusal: a device that cannot run it (unless
        ``skip_incompatible``), no device at all (unless ``allow_empty``), policy, overlap.
        """
        body = _rollout_body(
            namespace,
            model,
            version,
            selector=selector,
            waves=waves,
            slot=slot,
            gates=gates,
            auto_rollback=auto_rollback,
            start_at=start_at,
            start_paused=start_paused,
            skip_incompatible=skip_incompatible,
            allow_empty=allow_empty,
        )
        return Rollout.from_json(self._json("POST", "/rollouts", json=body))

    def plan_rollout(
        self,
        namespace: str,
        model: str,
        version: int | str,
        *,
        selector: str = "",
        waves: Sequence[int] = (1, 10, 50, 100),
        slot: str = "main",
        skip_incompatible: bool = False,
        allow_empty: bool = False,
    ) -> dict[str, Any]:
        """What `create_rollout` with these arguments would do, without doing it: matching
        devices, members per wave, skipped/incompatible devices and why, downloads, total
        bytes and ``refusals`` (empty when creating would succeed). docs/rollouts.md."""
        body = _rollout_body(
            namespace,
            model,
            version,
            selector=selector,
            waves=waves,
            slot=slot,
            skip_incompatible=skip_incompatible,
            allow_empty=allow_empty,
        )
        return dict(self._json("POST", "/rollouts/plan", json=body))

    def list_rollouts(
        self, namespace: str | None = None, *, state: str | None = None, limit: int = 100
    ) -> list[Rollout]:
        params = _drop_none({"namespace": namespace, "state": state, "limit": limit})
        return [Rollout.from_json(r) for r in self._json("GET", "/rollouts", params=params)]

    def get_rollout(self, rollout_id: str) -> Rollout:
        return Rollout.from_json(self._json("GET", f"/rollouts/{_seg(rollout_id)}"))

    def rollout_action(self, rollout_id: str, action: str) -> Rollout:
        """``pause``, ``resume``, ``advance``, ``cancel`` or ``rollback`` (409 when illegal)."""
        if action not in ROLLOUT_ACTIONS:
            raise ValueError(f"unknown rollout action {action!r}; one of {ROLLOUT_ACTIONS}")
        return Rollout.from_json(self._json("POST", f"/rollouts/{_seg(rollout_id)}/{action}"))

    def rollback_rollout(self, rollout_id: str, *, baseline: int | None = None) -> Rollout:
        """Roll back; devices whose first install this was go to ``baseline`` when given.
        ``Rollout.rollback`` says who goes back and who stays."""
        body = {"baseline": baseline} if baseline is not None else None
        return Rollout.from_json(
            self._json("POST", f"/rollouts/{_seg(rollout_id)}/rollback", json=body)
        )

    def edit_rollout_gates(self, rollout_id: str, **changes: int | None) -> dict[str, Any]:
        """Change gate settings (`GatePolicy` names) of a rollout that has not ended; the
        answer is the rollout with ``changed``: ``{name: {"from": …, "to": …}}`` (audited)."""
        unknown = sorted(set(changes) - set(GatePolicy.names()))
        if unknown:
            raise ValueError(f"unknown gate settings {unknown}; one of {GatePolicy.names()}")
        return dict(self._json("PATCH", f"/rollouts/{_seg(rollout_id)}/gates", json=changes))

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        """Counts per wave and state, success rate, gate status, time in wave."""
        return dict(self._json("GET", f"/rollouts/{_seg(rollout_id)}/status"))

    def rollout_devices(
        self,
        rollout_id: str,
        *,
        state: str | Sequence[str] | None = None,
        wave: int | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> RolloutMembersPage:
        """One page of the rollout's devices, by device id.

        ``state``: device states (``failed`` covers failed, rolled_back and timed_out);
        ``wave``: 1-based; ``limit`` up to 1000.
        """
        states = state if isinstance(state, str) or state is None else ",".join(state)
        params = _drop_none(
            {"state": states or None, "wave": wave, "limit": limit, "cursor": cursor}
        )
        return RolloutMembersPage.parse(
            self._json("GET", f"/rollouts/{_seg(rollout_id)}/devices", params=params)
        )

    def iter_rollout_devices(
        self,
        rollout_id: str,
        *,
        state: str | Sequence[str] | None = None,
        wave: int | None = None,
        page_size: int = 500,
    ) -> Iterator[RolloutMember]:
        """Every matching device of the rollout, fetching pages as they are consumed."""
        cursor: str | None = None
        while True:
            page = self.rollout_devices(
                rollout_id, state=state, wave=wave, limit=page_size, cursor=cursor
            )
            yield from page.devices
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def fleet_status(self, namespace: str | None = None) -> dict[str, Any]:
        """Device counts and the installed versions per model."""
        return dict(self._json("GET", "/fleet/status", params=_drop_none({"namespace": namespace})))

    # --- alias bindings ---------------------------------------------------------------

    def bind_alias(
        self,
        namespace: str,
        model: str,
        alias: str,
        *,
        selector: str = "",
        waves: Sequence[int] = (1, 10, 50, 100),
        slot: str = "main",
        gates: GatePolicy | None = None,
        auto_rollback: bool = False,
        auto_start: bool = False,
    ) -> RolloutBinding:
        """From now on, moving ``alias`` plans a rollout of the new version."""
        body = {
            "selector": selector,
            "waves": list(waves),
            "slot": slot,
            "gates": (gates or GatePolicy()).to_dict(),
            "auto_rollback": auto_rollback,
            "auto_start": auto_start,
        }
        path = f"/alias-bindings/{_seg(namespace)}/{_seg(model)}/{_seg(alias)}"
        return RolloutBinding.from_json(self._json("PUT", path, json=body))

    def list_alias_bindings(self, namespace: str | None = None) -> list[RolloutBinding]:
        params = _drop_none({"namespace": namespace})
        return [
            RolloutBinding.from_json(b) for b in self._json("GET", "/alias-bindings", params=params)
        ]

    def unbind_alias(self, namespace: str, model: str, alias: str) -> None:
        self._send(
            "DELETE", f"/api/v1/alias-bindings/{_seg(namespace)}/{_seg(model)}/{_seg(alias)}"
        )
