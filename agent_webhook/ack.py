"""Acknowledgement, Alertmanager-native: an ack is a silence, created and expired by the agent.

`POST /findings/{id}/ack` or `POST /incidents/{id}/ack` with `{"comment": ..., "for": "2h",
"by": "alice"}` creates one Alertmanager silence per firing, unacknowledged alert of the target
(matchers: exactly that alert's labels, so nothing else is silenced), records `acknowledged_by`,
`silence_id`, the time, the comment and the silence's end on each finding, and posts one `acked`
event into the incident's thread. `POST .../unack` (`{"by": ...}`) expires those silences
(`DELETE /api/v2/silence/{id}`), clears the acknowledgement and posts `unacked`.

Why through the agent rather than the CLI talking to Alertmanager itself: the operator needs one
credential (the agent's token, which `gpu-watchdog findings` already uses), the agent already
holds Alertmanager's URL and basic auth, the labels a silence must match exactly are the
unredacted ones only the agent's store has, and the silence, the finding and the thread post
cannot drift apart: when one silence of an incident fails, the ones created for it are expired
again and nothing is recorded.

Bad input is a 400 (or 404, 409) with a reason; Alertmanager down or refusing is a 502 naming
it; no `alertmanager_url` configured is a 503 saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import urllib.parse
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from agent_webhook.store import READ, StoreError, iso
from gpu_watchdog_core.logs import redact, strip_userinfo

if TYPE_CHECKING:
    from agent_webhook.service import Service

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^([0-9]{1,6})(m|h|d)$")
_UNITS = {"m": 60, "h": 3600, "d": 86400}
MIN_SECONDS, MAX_SECONDS = 60, 90 * 86400
MAX_COMMENT, MAX_BY = 1000, 100
_ID = re.compile(r"^[fi]-[0-9a-f]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class AckError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_duration(value: Any) -> int:
    """`30m`, `2h`, `7d`: between 1 minute and 90 days."""
    if not isinstance(value, str) or not (match := _DURATION.match(value.strip())):
        raise AckError(400, "for: expected a duration like 30m, 2h or 7d")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise AckError(400, "for: must be between 1m and 90d")
    return seconds


def _text(body: dict[str, Any], key: str, limit: int, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise AckError(400, f"{key}: required (a non-empty string)")
        return None
    if not isinstance(value, str):
        raise AckError(400, f"{key}: expected a string")
    if len(value) > limit:
        raise AckError(400, f"{key}: longer than {limit} characters")
    if _CONTROL.search(value):
        raise AckError(400, f"{key}: control or bidi characters are not allowed")
    return value.strip()


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise AckError(413, "body too large") from None
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise AckError(400, "body: not JSON") from None
    if not isinstance(body, dict):
        raise AckError(400, "body: expected a JSON object")
    return body


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class AlertmanagerSilences:
    """Creates and expires silences through Alertmanager's v2 API."""

    def __init__(self, session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.headers = headers or {}
        self.shown = strip_userinfo(self.url)

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        try:
            async with self.session.request(
                method,
                self.url + path,
                json=body,
                headers=self.headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                return resp.status, (await resp.text(errors="replace"))[:2000]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AckError(502, f"Alertmanager at {self.shown} unreachable: {type(exc).__name__}") from None

    async def create(self, labels: dict[str, str], ends: float, by: str, comment: str) -> str:
        matchers = [
            {"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in sorted(labels.items()) if v != ""
        ]
        status, text = await self._request(
            "POST",
            "/api/v2/silences",
            {
                "matchers": matchers,
                "startsAt": _rfc3339(time.time()),
                "endsAt": _rfc3339(ends),
                "createdBy": by,
                "comment": comment,
            },
        )
        if status != 200:
            raise AckError(
                502, f"Alertmanager at {self.shown} refused the silence: HTTP {status}: {redact(text[:200])}"
            )
        try:
            silence_id = json.loads(text)["silenceID"]
        except (ValueError, KeyError, TypeError):
            raise AckError(502, f"Alertmanager at {self.shown} answered without a silenceID") from None
        return str(silence_id)

    async def expire(self, silence_id: str) -> None:
        status, text = await self._request("DELETE", f"/api/v2/silence/{urllib.parse.quote(silence_id, safe='')}")
        # 404: already gone (expired by hand, or Alertmanager lost it): the goal is reached.
        if status == 500 and "already expired" in text:
            return
        if status not in (200, 404):
            raise AckError(502, f"Alertmanager at {self.shown} did not expire silence {silence_id}: HTTP {status}")


class AckAPI:
    """The HTTP handlers, bound to the service (its store, session, credentials and config)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def _silences(self) -> AlertmanagerSilences:
        config = self.service.config
        if not config.alertmanager_url:
            raise AckError(503, "acknowledgement needs alertmanager_url in the agent's config")
        if self.service.session is None:
            raise AckError(503, "the agent is starting; retry")
        headers = config.alertmanager_auth.headers() if config.alertmanager_auth else None
        return AlertmanagerSilences(self.service.session, config.alertmanager_url, headers)

    async def _targets(self, request: web.Request) -> tuple[str, list[dict[str, Any]]]:
        target = request.match_info["id"]
        kind = "incident" if request.path.startswith("/incidents/") else "finding"
        if not _ID.match(target) or (kind == "incident") != target.startswith("i-"):
            raise AckError(404, f"no {kind} with id {target[:80]!r}")
        store = self.service.store
        try:
            found = await store.call(READ, store.ack_targets, target)
        except StoreError:
            raise AckError(503, "cannot read findings right now") from None
        if found is None:
            raise AckError(404, f"no {kind} with id {target[:80]!r}")
        return target, found

    async def _guard(self, request: web.Request, handler: Any) -> web.Response:
        from agent_webhook.service import _error, _refusal

        refused = await _refusal(self.service._read_ok(request), "Bearer", "unauthorized")
        if refused is not None:
            return refused
        try:
            result: web.Response = await handler(request)
        except AckError as exc:
            return _error(exc.status, exc.reason)
        except Exception:
            log.exception("unexpected error handling an acknowledgement")
            return _error(500, "internal error; see the agent's log")
        return result

    async def ack(self, request: web.Request) -> web.Response:
        return await self._guard(request, self._ack)

    async def unack(self, request: web.Request) -> web.Response:
        return await self._guard(request, self._unack)

    async def _ack(self, request: web.Request) -> web.Response:
        body = await _body(request)
        comment = _text(body, "comment", MAX_COMMENT, required=True)
        by = _text(body, "by", MAX_BY, required=True)
        seconds = parse_duration(body.get("for", "2h"))
        assert comment is not None and by is not None
        target, found = await self._targets(request)
        firing = [f for f in found if f["status"] == "firing"]
        if not firing:
            what = "its alerts are still being investigated" if not found else "nothing of it is firing"
            raise AckError(409, f"{target}: {what}; nothing to silence")
        todo = [f for f in firing if not f["ack"]]
        if not todo:
            ack = firing[0]["ack"]
            raise AckError(
                409,
                f"{target}: already acknowledged by {ack.get('by')} (silence {ack.get('silence_id')}); unack first",
            )
        silences = self._silences()
        now = time.time()
        until = now + seconds
        created: list[tuple[int, dict[str, Any]]] = []
        try:
            for f in todo:
                silence_id = await silences.create(
                    f["labels"], until, by, f"{comment} (gpu-watchdog: {f['id']}, {f['incident_id'] or 'no incident'})"
                )
                record = {"by": by, "at": iso(now), "comment": comment, "silence_id": silence_id, "until": iso(until)}
                created.append((f["seq"], record))
        except AckError:
            for _, record in created:  # all or nothing: no silence without its record
                with contextlib.suppress(AckError):
                    await silences.expire(str(record["silence_id"]))
            raise
        ids = [f["id"] for f in todo]
        detail = {
            "kind": "acked",
            "target": target,
            "by": by,
            "comment": comment,
            "until": iso(until),
            "findings": ids,
            "silences": [r["silence_id"] for _, r in created],
        }
        store = self.service.store
        await store.call(READ, store.record_ack, created, detail)
        if self.service.delivery:
            self.service.delivery.wake.set()
        log.info("acknowledged", extra={"target": target, "by": redact(by), "silences": len(created)})
        return web.json_response(
            {
                "target": target,
                "acknowledged_by": by,
                "comment": comment,
                "until": iso(until),
                "acknowledged": [
                    {"finding_id": i, "silence_id": r["silence_id"]} for i, (_, r) in zip(ids, created, strict=True)
                ],
            }
        )

    async def _unack(self, request: web.Request) -> web.Response:
        body = await _body(request)
        by = _text(body, "by", MAX_BY, required=False)
        target, found = await self._targets(request)
        acked = [f for f in found if f["ack"]]
        if not acked:
            raise AckError(409, f"{target}: not acknowledged")
        silences = self._silences()
        for f in acked:
            await silences.expire(str(f["ack"].get("silence_id")))
        detail = {
            "kind": "unacked",
            "target": target,
            "by": by,
            "acknowledged_by": acked[0]["ack"].get("by"),
            "findings": [f["id"] for f in acked],
            "silences": [f["ack"].get("silence_id") for f in acked],
        }
        store = self.service.store
        await store.call(READ, store.record_unack, [f["seq"] for f in acked], detail)
        if self.service.delivery:
            self.service.delivery.wake.set()
        log.info("acknowledgement withdrawn", extra={"target": target, "silences": len(acked)})
        return web.json_response({"target": target, "expired": detail["silences"], "findings": detail["findings"]})
