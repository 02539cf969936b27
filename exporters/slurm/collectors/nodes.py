"""Node states, reasons, CPUs and memory from sinfo."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.sinfo import Node

MIB = 1024 * 1024
# Nodes in these states (or with these flags) get a slurm_node_reason_info series.
TROUBLE_STATES = frozenset({"down", "drained", "draining", "drain", "fail", "failing", "inval", "maint"})
TROUBLE_FLAGS = frozenset({"drain", "down", "fail", "not_responding", "maintenance", "inval"})


class NodesCollector(SourceCollector):
    name = "nodes"

    def families(self) -> Iterable[Metric]:
        nodes: list[Node] = self.items("sinfo")
        counts = Counter(n.state for n in nodes)
        by_state = GaugeMetricFamily("slurm_nodes", "Nodes by state (sinfo's long state).", labels=["state"])
        for name, count in sorted(counts.items()):
            by_state.add_metric([name], count)
        state = GaugeMetricFamily("slurm_node_state", "The node's state (always 1).", labels=["node", "state"])
        flags = GaugeMetricFamily(
            "slurm_node_state_flag",
            "State flags of the node: drain, not_responding, dynamic_norm, ... (always 1).",
            labels=["node", "flag"],
        )
        reason = GaugeMetricFamily(
            "slurm_node_reason_info",
            "Why a node is down, drained or failing (always 1).",
            labels=["node", "state", "reason"],
        )
        since = GaugeMetricFamily(
            "slurm_node_reason_timestamp_seconds",
            "Unix time the reason of a down, drained or failing node was set: down or drained since.",
            labels=["node"],
        )
        cpus_total = GaugeMetricFamily("slurm_node_cpus", "CPUs of the node.", labels=["node"])
        cpus_alloc = GaugeMetricFamily("slurm_node_cpus_allocated", "CPUs allocated to jobs.", labels=["node"])
        mem_total = GaugeMetricFamily("slurm_node_memory_total_bytes", "Memory of the node.", labels=["node"])
        mem_alloc = GaugeMetricFamily("slurm_node_memory_allocated_bytes", "Memory allocated to jobs.", labels=["node"])
        partition = GaugeMetricFamily(
            "slurm_node_partition_info", "Partitions the node belongs to (always 1).", labels=["node", "partition"]
        )
        for node in nodes:
            state.add_metric([node.name, node.state], 1)
            for flag in sorted(node.flags):
                flags.add_metric([node.name, flag], 1)
            if node.reason and (node.state in TROUBLE_STATES or node.flags & TROUBLE_FLAGS):
                reason.add_metric([node.name, node.state, node.reason], 1)
                if node.reason_time is not None:
                    since.add_metric([node.name], node.reason_time)
            # A field sinfo printed unreadably (None) drops only its own series for this node.
            if node.cpus_total is not None and node.cpus_allocated is not None:
                cpus_total.add_metric([node.name], node.cpus_total)
                cpus_alloc.add_metric([node.name], node.cpus_allocated)
            if node.memory_mb is not None:
                mem_total.add_metric([node.name], node.memory_mb * MIB)
            if node.memory_allocated_mb is not None:
                mem_alloc.add_metric([node.name], node.memory_allocated_mb * MIB)
            for part in node.partitions:
                partition.add_metric([node.name, part], 1)
        return [by_state, state, flags, reason, since, cpus_total, cpus_alloc, mem_total, mem_alloc, partition]
