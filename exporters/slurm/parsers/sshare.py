"""`sshare -P`: fair-share factors and usage per account and user (needs accounting)."""

from __future__ import annotations

from dataclasses import dataclass

from exporters.slurm.parsers.common import Parsed, nullable, parse_float

FIELDS = ("Account", "User", "RawShares", "NormShares", "RawUsage", "EffectvUsage", "FairShare")
ARGS = ["-h", "-P", "-a", "-o", ",".join(FIELDS)]


@dataclass
class Share:
    account: str
    user: str  # "" for an account's own row
    norm_shares: float | None
    raw_usage: float | None
    effective_usage: float | None
    fairshare: float | None


def parse(text: str, deadline: float | None = None) -> Parsed[Share]:
    result: Parsed[Share] = Parsed(deadline=deadline)
    for line, cols in result.rows(text, len(FIELDS), free_text_last=False):
        account, user, _raw_shares, norm, raw_usage, eff, fairshare = cols
        if not account.strip():
            result.skip(line, "no account")
            continue
        result.items.append(
            Share(
                account=account.strip(),
                user=nullable(user),
                norm_shares=parse_float(norm),
                raw_usage=parse_float(raw_usage),
                effective_usage=parse_float(eff),
                fairshare=parse_float(fairshare),
            )
        )
    return result
