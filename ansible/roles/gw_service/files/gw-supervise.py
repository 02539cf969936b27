#!/usr/bin/env python3
"""gw-supervise: keep gpu-watchdog's daemons running on hosts without systemd (containers, pods).

Each service is a JSON definition in CONF_DIR/NAME.json (written by the Ansible `gw_service`
role): argv, user, group, env, env_file, cwd, log file, files whose content restarts the service
when it changes (`watch`), and a readiness probe. `run NAME` is the keeper: it runs detached in
its own session, starts the program in the foreground, restarts it with backoff when it exits,
and stops it on SIGTERM. Its pid is in RUN_DIR/NAME.pid, its state in RUN_DIR/NAME.state.

    gw-supervise [--conf-dir D] [--run-dir D] ensure NAME [--dry-run]   # start or restart if needed
    gw-supervise ... stop NAME... | stop --all
    gw-supervise ... restart NAME
    gw-supervise ... status [NAME...]
    gw-supervise ... start-all                  # ensure every defined service, by its "order"

`start-all` is what a RunPod pod's entrypoint runs at boot: the container disk of a stopped pod
is wiped, the definitions (kept on the pod's volume) are not, so a resumed pod starts its
services again without Ansible. Services start one by one by `order` (then name), each waiting
for its readiness probe, so slurmd finds munged ready; one that fails does not stop the rest.

`ensure` prints one JSON line {"name", "changed", "action", "pid"} so Ansible can report
changed only when something was started or restarted. Stops go by pid (never by name).
Standard library only: it runs with the target's system Python.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pwd
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_CONF_DIR = "/opt/gpu-watchdog/services"
DEFAULT_RUN_DIR = "/opt/gpu-watchdog/run"
KEEPER_MARK = "gw-supervise"
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a run this long resets the restart backoff


class SuperviseError(RuntimeError):
    pass


# ---------------------------------------------------------------- definitions and state


def load_definition(conf_dir: Path, name: str) -> dict[str, Any]:
    path = conf_dir / f"{name}.json"
    try:
        definition = json.loads(path.read_text())
    except FileNotFoundError:
        raise SuperviseError(f"no definition for service {name!r} at {path}") from None
    except json.JSONDecodeError as exc:
        raise SuperviseError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(definition, dict) or not isinstance(definition.get("argv"), list) or not definition["argv"]:
        raise SuperviseError(f"{path}: 'argv' must be a non-empty list")
    definition.setdefault("name", name)
    return definition


def definition_digest(definition: dict[str, Any]) -> str:
    """What the running instance was started from: the definition plus the content of the
    files it reads (env file, watched config files). Any change means restart."""
    digest = hashlib.sha256(json.dumps(definition, sort_keys=True).encode())
    for path in [definition.get("env_file") or "", *definition.get("watch", [])]:
        if not path:
            continue
        digest.update(path.encode() + b"\0")
        try:
            digest.update(Path(path).read_bytes())
        except OSError:
            digest.update(b"<missing>")
    return digest.hexdigest()


def read_env_file(path: str | None) -> dict[str, str]:
    env: dict[str, str] = {}
    if not path:
        return env
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip()
    return env


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def state_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.state"


def read_state(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        state = json.loads(state_file(run_dir, name).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def keeper_pid(run_dir: Path, name: str) -> int | None:
    """The live keeper's pid, checked against its command line so a reused pid is not ours."""
    try:
        pid = int(pid_file(run_dir, name).read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = _cmdline(pid)
    is_keeper = any(KEEPER_MARK in part for part in cmdline) and "run" in cmdline and name in cmdline
    return pid if is_keeper else None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def log_tail(definition: dict[str, Any], max_bytes: int = 3000) -> str:
    try:
        with open(definition["log"], "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            return fh.read().decode(errors="replace")
    except (OSError, KeyError):
        return ""


# ---------------------------------------------------------------- the keeper


def set_open_files(limit: int) -> None:
    """systemd's LimitNOFILE for the keeper and so for the program it starts (limits are inherited)."""
    if limit <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    except (ValueError, OSError):  # not root: as high as the hard limit allows
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))


def user_env(user: str | int | None) -> dict[str, str]:
    """HOME, USER and LOGNAME of the account a service runs as (what systemd's User= sets):
    inherited from root, a service's `~` would be /root, which it cannot write."""
    if user is None:
        return {}
    try:
        entry = pwd.getpwuid(user) if isinstance(user, int) or str(user).isdigit() else pwd.getpwnam(str(user))
    except KeyError:
        return {}  # Popen reports the unknown user when it starts the program
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}


def run_keeper(conf_dir: Path, run_dir: Path, name: str) -> int:
    """Runs detached (own session): start the program, restart it when it exits, stop on TERM."""
    definition = load_definition(conf_dir, name)
    digest = definition_digest(definition)
    env = dict(os.environ)
    env.update(user_env(definition.get("user") or None))
    env.update({str(k): str(v) for k, v in (definition.get("env") or {}).items()})
    env.update(read_env_file(definition.get("env_file")))
    log_path = Path(definition["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    set_open_files(int(definition.get("nofile") or 0))
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pid_file(run_dir, name).write_text(f"{os.getpid()}\n")
    backoff = 1.0
    restarts = 0
    stop_timeout = float(definition.get("stop_timeout", 15))
    while not stopping:
        with open(log_path, "ab") as log:
            log.write(f"--- gw-supervise: starting {name}: {' '.join(definition['argv'])}\n".encode())
            log.flush()
            started = time.monotonic()
            try:
                child = subprocess.Popen(
                    [str(a) for a in definition["argv"]],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=definition.get("cwd") or "/",
                    env=env,
                    user=definition.get("user") or None,
                    group=definition.get("group") or None,
                    extra_groups=definition.get("extra_groups") or None,
                    umask=int(str(definition.get("umask", "0022")), 8),
                )
            except (OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
                log.write(f"--- gw-supervise: cannot start {name}: {exc}\n".encode())
                child = None
        if child is not None:
            write_json_atomic(
                state_file(run_dir, name),
                {
                    "keeper_pid": os.getpid(),
                    "pid": child.pid,
                    "digest": digest,
                    "restarts": restarts,
                    "started_at": time.time(),
                },
            )
            while True:
                try:
                    code = child.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if stopping:
                break
            with open(log_path, "ab") as log:
                log.write(f"--- gw-supervise: {name} exited with code {code}; restarting in {backoff:.0f}s\n".encode())
            if time.monotonic() - started > HEALTHY_AFTER:
                backoff = 1.0
        if not definition.get("restart", True):
            break
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
        backoff = min(backoff * 2, BACKOFF_MAX)
        restarts += 1
    if child is not None and child.poll() is None:
        try:
            child.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    with contextlib.suppress(OSError):
        state_file(run_dir, name).unlink()
    with contextlib.suppress(OSError):
        pid_file(run_dir, name).unlink()
    return 0


# ---------------------------------------------------------------- readiness


def _probe(definition: dict[str, Any]) -> bool:
    ready = definition.get("ready") or {}
    if "tcp" in ready:
        host, _, port = str(ready["tcp"]).rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1):
                return True
        except OSError:
            return False
    if "path" in ready:
        return Path(ready["path"]).exists()
    if "command" in ready:
        try:
            result = subprocess.run(
                [str(a) for a in ready["command"]], stdin=subprocess.DEVNULL, capture_output=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0
    return True


def wait_ready(run_dir: Path, definition: dict[str, Any], keeper: int) -> int:
    """Wait until the program answers its probe and has stayed up; its pid, or SuperviseError."""
    name = definition["name"]
    ready = definition.get("ready") or {}
    timeout = float(ready.get("timeout", 30))
    settle = float(ready.get("settle", 1.0))  # programs that die on a bad config do it fast
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(run_dir, name)
        child = state.get("pid")
        if not _alive(keeper):
            raise SuperviseError(f"{name}: keeper exited\n{log_tail(definition)}")
        if state.get("restarts", 0) > 0:
            raise SuperviseError(f"{name}: exited right after starting\n{log_tail(definition)}")
        if child and _alive(child) and _probe(definition):
            time.sleep(settle)
            state = read_state(run_dir, name)
            if state.get("pid") == child and _alive(child):
                return int(child)
        time.sleep(0.2)
    raise SuperviseError(f"{name}: not ready after {timeout:.0f}s\n{log_tail(definition)}")


# ---------------------------------------------------------------- commands


def start(conf_dir: Path, run_dir: Path, definition: dict[str, Any]) -> int:
    name = definition["name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    Path(definition["log"]).parent.mkdir(parents=True, exist_ok=True)
    state_file(run_dir, name).unlink(missing_ok=True)
    keeper = subprocess.Popen(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--conf-dir",
            str(conf_dir),
            "--run-dir",
            str(run_dir),
            "run",
            name,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # detached: survives the Ansible task that started it
        close_fds=True,
        cwd="/",
    )
    pid_file(run_dir, name).write_text(f"{keeper.pid}\n")
    try:
        return wait_ready(run_dir, definition, keeper.pid)
    except SuperviseError:
        stop(run_dir, name, definition)
        raise


def stop(run_dir: Path, name: str, definition: dict[str, Any] | None = None) -> bool:
    """Stop the keeper (which stops its program); True when something was running."""
    pid = keeper_pid(run_dir, name)
    state = read_state(run_dir, name)
    child = state.get("pid") if pid else None
    if pid is None:
        # The keeper died hard (kill -9): its program may still run; stop it if it is ours.
        orphan = state.get("pid")
        argv0 = str(((definition or {}).get("argv") or [""])[0])
        found = False
        if orphan and _alive(orphan) and argv0 and _cmdline(orphan)[:1] == [argv0]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(orphan, signal.SIGTERM)
            found = True
        pid_file(run_dir, name).unlink(missing_ok=True)
        state_file(run_dir, name).unlink(missing_ok=True)
        return found
    timeout = float((definition or {}).get("stop_timeout", 15)) + 5
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (_alive(pid) or _alive(child)):
        time.sleep(0.1)
    if _alive(pid) or _alive(child):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    pid_file(run_dir, name).unlink(missing_ok=True)
    state_file(run_dir, name).unlink(missing_ok=True)
    return True


def ensure(conf_dir: Path, run_dir: Path, name: str, dry_run: bool) -> dict[str, Any]:
    definition = load_definition(conf_dir, name)
    want = definition_digest(definition)
    pid = keeper_pid(run_dir, name)
    state = read_state(run_dir, name)
    if pid and state.get("digest") == want and _alive(state.get("pid")):
        return {"name": name, "changed": False, "action": "none", "pid": state.get("pid")}
    action = "restarted" if pid else "started"
    if dry_run:
        return {"name": name, "changed": True, "action": f"would be {action}", "pid": None}
    if pid:
        stop(run_dir, name, definition)
    child = start(conf_dir, run_dir, definition)
    return {"name": name, "changed": True, "action": action, "pid": child}


def start_all(conf_dir: Path, run_dir: Path) -> list[dict[str, Any]]:
    definitions = []
    for path in conf_dir.glob("*.json"):
        try:
            definitions.append(load_definition(conf_dir, path.stem))
        except SuperviseError as exc:
            definitions.append({"name": path.stem, "error": str(exc), "order": 0})
    results = []
    for definition in sorted(definitions, key=lambda d: (int(d.get("order", 50)), str(d["name"]))):
        name = str(definition["name"])
        if "error" in definition:
            results.append({"name": name, "changed": False, "action": "failed", "error": definition["error"]})
            continue
        try:
            results.append(ensure(conf_dir, run_dir, name, dry_run=False))
        except SuperviseError as exc:
            results.append({"name": name, "changed": False, "action": "failed", "error": str(exc)})
    return results


def status(conf_dir: Path, run_dir: Path, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names or sorted(p.stem for p in conf_dir.glob("*.json")):
        pid = keeper_pid(run_dir, name)
        state = read_state(run_dir, name) if pid else {}
        rows.append(
            {
                "name": name,
                "running": bool(pid and _alive(state.get("pid"))),
                "keeper_pid": pid,
                "pid": state.get("pid"),
                "restarts": state.get("restarts", 0),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gw-supervise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf-dir", default=os.environ.get("GW_SUPERVISE_CONF_DIR", DEFAULT_CONF_DIR))
    parser.add_argument("--run-dir", default=os.environ.get("GW_SUPERVISE_RUN_DIR", DEFAULT_RUN_DIR))
    sub = parser.add_subparsers(dest="command", required=True)
    p_ensure = sub.add_parser("ensure", help="start NAME, or restart it when its definition changed")
    p_ensure.add_argument("name")
    p_ensure.add_argument("--dry-run", action="store_true", help="say what would happen (Ansible check mode)")
    p_stop = sub.add_parser("stop", help="stop services by their pid files")
    p_stop.add_argument("names", nargs="*")
    p_stop.add_argument("--all", action="store_true")
    p_restart = sub.add_parser("restart")
    p_restart.add_argument("name")
    p_status = sub.add_parser("status")
    p_status.add_argument("names", nargs="*")
    sub.add_parser("start-all", help="ensure every defined service, in order (a pod's boot)")
    p_run = sub.add_parser("run", help="(internal) the keeper process")
    p_run.add_argument("name")
    args = parser.parse_args(argv)
    conf_dir, run_dir = Path(args.conf_dir), Path(args.run_dir)
    try:
        if args.command == "run":
            return run_keeper(conf_dir, run_dir, args.name)
        if args.command == "ensure":
            print(json.dumps(ensure(conf_dir, run_dir, args.name, args.dry_run)))
            return 0
        if args.command == "start-all":
            results = start_all(conf_dir, run_dir)
            for result in results:
                print(json.dumps(result))
            return 1 if any(r["action"] == "failed" for r in results) else 0
        if args.command == "restart":
            definition = load_definition(conf_dir, args.name)
            stop(run_dir, args.name, definition)
            print(json.dumps({"name": args.name, "changed": True, "pid": start(conf_dir, run_dir, definition)}))
            return 0
        if args.command == "stop":
            names = args.names
            if args.all:
                names = sorted({p.stem for p in run_dir.glob("*.pid")} | {p.stem for p in conf_dir.glob("*.json")})
            for name in names:
                definition = None
                with contextlib.suppress(SuperviseError):
                    definition = load_definition(conf_dir, name)
                print(json.dumps({"name": name, "changed": stop(run_dir, name, definition)}))
            return 0
        rows = status(conf_dir, run_dir, args.names)
        for row in rows:
            print(json.dumps(row))
        return 0 if all(row["running"] for row in rows) else 3
    except SuperviseError as exc:
        print(f"gw-supervise: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
