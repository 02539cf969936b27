"""Incidents: alerts that share a node (or an Alertmanager group) within a window are one incident.

One dead 8-GPU node raises eight GPU alerts and a few Slurm ones within minutes; without this it
would be eight investigations, eight LLM runs and eight posts. With it:

- At ingest (on the store thread, so assignment is serialized and race-free) each new firing
  alert joins the newest incident with the same key whose last alert joined within
  ``incident_window_seconds``, or opens a new one. The key is the alert's ``node`` label, else
  its Alertmanager group key, else the alert alone. A window of 0 gives every alert its own
  incident (the behaviour before incidents existed).
- The work queue hands out one alert of an incident at a time (``claim`` skips alerts whose
  incident has an investigation in flight), so the second alert of a kind always finds the
  first one's finding.
- The first alert of each alertname in an incident is investigated (evidence, triage, the LLM);
  a later alert of a kind already investigated gets a finding that reuses that diagnosis
  (``derived_from`` names the finding it came from) and no investigation or LLM run of its own.
  A new alertname joining is investigated: a new kind of failure deserves its own diagnosis.
- Sinks get one post per incident (event ``new``) and everything after it threaded under it:
  ``joined`` (another alert joined), ``resolved`` (one alert resolved; the incident snapshot says
  whether all have), ``acked`` / ``unacked`` (see :mod:`agent_webhook.ack`). Events of one
  incident reach a sink in order, and the first post's reference (a Slack ``ts``, a Grafana
  annotation id) is kept per incident.

Findings stay one per alert; each carries ``incident_id``.

Schema changes are additive (new tables, new nullable columns), so older databases open and
their findings simply have no incident.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

from agent_webhook.model import Alert, Diagnosis

if TYPE_CHECKING:
    from agent_webhook.db import Database

DEFAULT_WINDOW_SECONDS = 600.0

INCIDENT_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    node TEXT,
    status TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_alert_at REAL NOT NULL,
    resolved_at REAL
);
CREATE INDEX IF NOT EXISTS incidents_by_key ON incidents (key, last_alert_at);
-- The first post's reference per sink (Slack ts, Grafana annotation id): the thread's parent.
CREATE TABLE IF NOT EXISTS incident_refs (
    incident_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (incident_id, sink)
);
"""

# (table, column, type) added to tables that predate incidents and acknowledgements.
_COLUMNS = (
    ("alerts", "incident_id", "TEXT"),
    ("findings", "incident_id", "TEXT"),
    ("findings", "derived_from", "TEXT"),
    ("findings", "ack", "TEXT"),
    ("outbox", "incident_id", "TEXT"),
    ("outbox", "detail", "TEXT"),
)


def migrate(conn: Database) -> None:
    conn.executescript(INCIDENT_SCHEMA)
    for table, column, kind in _COLUMNS:
        if column not in conn.columns(table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    conn.execute("CREATE INDEX IF NOT EXISTS alerts_by_incident ON alerts (incident_id)")
    conn.execute("CREATE INDEX IF NOT EXISTS findings_by_incident ON findings (incident_id)")


def incident_key(alert: Alert) -> str:
    """What makes alerts one incident: the node, else Alertmanager's group, else the alert itself."""
    if alert.node:
        return "node:" + alert.node
    if alert.group_key:
        return "group:" + alert.group_key
    return "alert:" + alert.fingerprint


def assign(c: Database, alert_id: int, alert: Alert, now: float, window: float) -> str:
    """Put a new firing alert into its incident (joining one within the window, or a new one)."""
    key = incident_key(alert)
    row = None
    if window > 0:
        row = c.execute(
            "SELECT id FROM incidents WHERE key=? AND last_alert_at>=? ORDER BY seq DESC LIMIT 1",
            (key, now - window),
        ).fetchone()
    if row is None:
        incident_id = "i-" + secrets.token_hex(8)
        c.execute(
            "INSERT INTO incidents (id, key, node, status, created_at, updated_at, last_alert_at)"
            " VALUES (?,?,?, 'firing', ?,?,?)",
            (incident_id, key, alert.node, now, now, now),
        )
    else:
        incident_id = str(row["id"])
        # A resolved incident that gets a new alert within the window is open again.
        c.execute(
            "UPDATE incidents SET status='firing', resolved_at=NULL, updated_at=?, last_alert_at=? WHERE id=?",
            (now, now, incident_id),
        )
    c.execute("UPDATE alerts SET incident_id=? WHERE id=?", (incident_id, alert_id))
    return incident_id


def refresh_status(c: Database, incident_id: str, now: float) -> None:
    """Resolved once none of its alerts fires any more."""
    firing = c.execute(
        "SELECT COUNT(*) FROM alerts WHERE incident_id=? AND status='firing'", (incident_id,)
    ).fetchone()[0]
    if firing:
        c.execute("UPDATE incidents SET status='firing', resolved_at=NULL, updated_at=? WHERE id=?", (now, incident_id))
    else:
        c.execute(
            "UPDATE incidents SET status='resolved', resolved_at=COALESCE(resolved_at, ?), updated_at=? WHERE id=?",
            (now, now, incident_id),
        )


def lead_for(c: Database, incident_id: str, alertname: str) -> Any:
    """The finding of the incident that was investigated for this alertname, if any."""
    row: Any = c.execute(
        "SELECT * FROM findings WHERE incident_id=? AND alertname=? AND derived_from IS NULL ORDER BY seq LIMIT 1",
        (incident_id, alertname),
    ).fetchone()
    return row


def first_event(c: Database, incident_id: str) -> bool:
    """True when the incident has no finding yet: its finding is the incident's first post."""
    return c.execute("SELECT 1 FROM findings WHERE incident_id=? LIMIT 1", (incident_id,)).fetchone() is None


def snapshot(c: Database, incident_id: str) -> dict[str, Any] | None:
    """The incident with its alerts (and their findings), as the API and the sinks show it."""
    row = c.execute("SELECT * FROM incidents WHERE id=?", (incident_id,)).fetchone()
    return None if row is None else incident_json(c, row)


def incident_json(c: Database, row: Any) -> dict[str, Any]:
    from agent_webhook.store import iso  # the store imports this module

    alerts = []
    llm_runs = 0
    acknowledged: list[dict[str, Any]] = []
    for a in c.execute(
        "SELECT a.fingerprint, a.starts_at, a.status, a.alertname, a.node, a.gpu, f.id AS finding_id,"
        " f.summary, f.severity, f.derived_from, f.llm_used, f.ack FROM alerts a"
        " LEFT JOIN findings f ON f.alert_id=a.id WHERE a.incident_id=? ORDER BY a.id",
        (row["id"],),
    ):
        ack = json.loads(a["ack"]) if a["ack"] else None
        if a["finding_id"] is not None and a["derived_from"] is None and a["llm_used"]:
            llm_runs += 1
        if ack:
            acknowledged.append({"finding_id": a["finding_id"], **ack})
        alerts.append(
            {
                "alertname": a["alertname"],
                "node": a["node"],
                "gpu": a["gpu"],
                "status": a["status"],
                "fingerprint": a["fingerprint"],
                "starts_at": a["starts_at"],
                "finding_id": a["finding_id"],
                "severity": a["severity"],
                "summary": a["summary"],
                "derived_from": a["derived_from"],
                "acknowledged_by": ack.get("by") if ack else None,
            }
        )
    return {
        "id": row["id"],
        "key": row["key"],
        "node": row["node"],
        "status": row["status"],
        "alertnames": sorted({a["alertname"] for a in alerts}),
        "firing": sum(1 for a in alerts if a["status"] == "firing"),
        "alerts": alerts,
        "llm_runs": llm_runs,
        "acknowledged": acknowledged,
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "resolved_at": iso(row["resolved_at"]),
    }


def derived_diagnosis(alert: Alert, lead: dict[str, Any], incident_id: str) -> Diagnosis:
    """The finding of an alert whose kind the incident already investigated: that diagnosis, reused."""
    parts = (f"on {alert.node}" if alert.node else "", f"GPU {alert.gpu}" if alert.gpu else "")
    where = " ".join(p for p in parts if p)
    summary = alert.annotations.get("summary") or f"{alert.alertname} {where}".strip()
    llm = lead.get("llm") or {}
    note = (
        f"_Same kind of alert as finding {lead['id']} of incident {incident_id}: its diagnosis applies here "
        "and this alert was not investigated again._"
    )
    return Diagnosis(
        severity=lead.get("severity") or "warning",
        summary=" ".join(str(summary).split())[:240],
        likely_cause=str(lead.get("likely_cause") or ""),
        diagnosis_markdown=note + "\n\n" + str(lead.get("diagnosis") or ""),
        recommended_actions=[str(a) for a in lead.get("recommended_actions") or []],
        llm_used=bool(llm.get("used")),
        llm_model=llm.get("model"),
        triage_rule=lead.get("triage_rule"),
    )
