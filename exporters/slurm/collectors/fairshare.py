"""Fair-share factors and usage per account and user, from sshare (empty without accounting)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.sshare import Share


class FairshareCollector(SourceCollector):
    name = "fairshare"

    def families(self) -> Iterable[Metric]:
        shares: list[Share] = self.items("sshare")
        specs = (
            ("slurm_share_fairshare", "Fair-share factor (0..1).", "fairshare"),
            ("slurm_share_normalized_shares", "Normalized shares (0..1).", "norm_shares"),
            ("slurm_share_effective_usage", "Effective usage (0..1).", "effective_usage"),
            ("slurm_share_raw_usage", "Raw decayed usage (TRES-seconds).", "raw_usage"),
        )
        families = []
        for name, doc, attr in specs:
            family = GaugeMetricFamily(name, doc, labels=["account", "user"])
            seen: set[tuple[str, str]] = set()
            for share in shares:
                value = getattr(share, attr)
                if value is None or (share.account, share.user) in seen:
                    continue
                seen.add((share.account, share.user))
                family.add_metric([share.account, share.user], value)
            families.append(family)
        return families
