"""Per-partition GPUs, CPUs and node counts from sinfo."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.sinfo import Node


class PartitionsCollector(SourceCollector):
    name = "partitions"

    def families(self) -> Iterable[Metric]:
        nodes: list[Node] = self.items("sinfo")
        gpus_total: dict[str, int] = defaultdict(int)
        gpus_alloc: dict[str, int] = defaultdict(int)
        cpus_total: dict[str, int] = defaultdict(int)
        cpus_alloc: dict[str, int] = defaultdict(int)
        node_states: dict[tuple[str, str], int] = defaultdict(int)
        for node in nodes:
            for part in node.partitions:
                # An unreadable field (None) adds nothing; the node still counts in its state.
                gpus_total[part] += sum((node.gpus_total or {}).values())
                gpus_alloc[part] += sum((node.gpus_allocated or {}).values())
                cpus_total[part] += node.cpus_total or 0
                cpus_alloc[part] += node.cpus_allocated or 0
                node_states[(part, node.state)] += 1
        families = []
        for name, doc, values in (
            ("slurm_partition_gpus", "GPUs of the partition's nodes.", gpus_total),
            ("slurm_partition_gpus_allocated", "GPUs allocated on the partition's nodes.", gpus_alloc),
            ("slurm_partition_cpus", "CPUs of the partition's nodes.", cpus_total),
            ("slurm_partition_cpus_allocated", "CPUs allocated on the partition's nodes.", cpus_alloc),
        ):
            family = GaugeMetricFamily(name, doc, labels=["partition"])
            for part in sorted(cpus_total):
                family.add_metric([part], values.get(part, 0))
            families.append(family)
        nodes_family = GaugeMetricFamily(
            "slurm_partition_nodes", "Nodes of the partition by state.", labels=["partition", "state"]
        )
        for (part, state), count in sorted(node_states.items()):
            nodes_family.add_metric([part, state], count)
        families.append(nodes_family)
        return families
