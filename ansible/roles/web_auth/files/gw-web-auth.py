"""Print an exporter-toolkit web config (JSON, which is YAML) with bcrypt hashes of the users given
on stdin ({"users": {name: password}, "file": existing config, "cost": bcrypt cost}).

A hash already in the existing file is kept while it still verifies its user's password: the
output then equals the file and Ansible reports no change. Passwords come on stdin only, never
on the command line (visible in ps) or in the output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import bcrypt


def existing_hashes(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # absent, or not written by us: every hash is made afresh
    users = data.get("basic_auth_users") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in users.items()} if isinstance(users, dict) else {}


def still_valid(password: str, hashed: str | None) -> bool:
    if not hashed:
        return False
    try:
        return bcrypt.checkpw(password.encode(), hashed.encode())
    except ValueError:  # not a bcrypt hash
        return False


def main() -> int:
    request = json.load(sys.stdin)
    users = request["users"]
    if not isinstance(users, dict) or not users:
        print("gw-web-auth: no users given", file=sys.stderr)
        return 2
    old = existing_hashes(Path(request["file"]))
    rounds = int(request.get("cost", 10))
    hashed = {}
    for name, password in sorted(users.items()):
        if not isinstance(name, str) or not name or ":" in name or not isinstance(password, str) or not password:
            print(f"gw-web-auth: user {name!r}: needs a name without ':' and a non-empty password", file=sys.stderr)
            return 2
        keep = old.get(name)
        if keep and still_valid(password, keep):
            hashed[name] = keep
        else:
            hashed[name] = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    json.dump({"basic_auth_users": hashed}, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
