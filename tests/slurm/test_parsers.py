"""Parsers against Slurm output: 22.05 recorded from a real slurmctld, 23.11/24.11 hand-written shapes."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pytest

from exporters.slurm.backend import UnreadableOutput, check_readable
from exporters.slurm.collectors.gpus import from_sinfo, job_gpu_map
from exporters.slurm.parsers import licenses, reservations, scontrol_jobs, sdiag, sinfo, squeue, sshare
from exporters.slurm.parsers.common import ParseTimeout, parse_mebibytes, parse_time
from exporters.slurm.parsers.gres import (
    gpus_by_type,
    parse_gres,
    tres_alloc_gpus,
    tres_cpus_memory,
    tres_request_gpus,
)
from exporters.slurm.parsers.hostlist import HostlistError, expand

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(version: str, command: str) -> str:
    return (FIXTURES / version / f"{command}.txt").read_text()


def by_name(nodes: list[sinfo.Node]) -> dict[str, sinfo.Node]:
    return {n.name: n for n in nodes}


def test_sinfo_22_05_recorded() -> None:
    parsed = sinfo.parse(fixture("22.05", "sinfo"))
    assert parsed.errors == 0
    nodes = by_name(parsed.items)
    assert set(nodes) == {"vm", "fake0001", "fake0002"}
    vm = nodes["vm"]
    assert vm.state == "draining"
    assert "drain" in vm.flags
    assert vm.reason == "XID 79"
    assert vm.partitions == ["gpu", "debug"]
    assert vm.gpus_total == {"h100": 4} and vm.gpus_allocated == {"h100": 4}
    assert (vm.cpus_total, vm.cpus_allocated, vm.memory_mb, vm.memory_allocated_mb) == (8, 4, 16000, 400)
    assert nodes["fake0001"].state == "unknown"
    assert nodes["fake0001"].flags == {"not_responding"}
    assert nodes["fake0001"].reason == ""


def test_sinfo_23_11_states_long_names_mixed_gpu_types() -> None:
    parsed = sinfo.parse(fixture("23.11", "sinfo"))
    assert parsed.errors == 0
    nodes = by_name(parsed.items)
    long_name = nodes["gpu-node-a100-rack12-slot07"]  # 27 characters, not cut at 20
    assert long_name.partitions == ["gpu", "long"]
    assert long_name.gpus_total == {"a100": 8} and long_name.gpus_allocated == {"a100": 5}
    assert nodes["h100-01"].state == "drained"
    assert nodes["h100-01"].flags == {"drain", "not_responding"}
    assert nodes["h100-01"].reason == "XID 79 GPU fell off the bus"
    assert nodes["h100-01"].reason_time == time.mktime((2025, 2, 3, 6, 12, 40, 0, 0, -1))
    assert nodes["h100-04"].reason_time is None  # sinfo prints Unknown
    assert nodes["h100-04"].flags == {"dynamic_norm"}
    assert nodes["h100-05"].flags == {"power_down", "powered_down"}
    assert nodes["h100-06"].flags == {"planned"}
    assert nodes["h100-06"].gpus_total == {"h100": 4, "l40s": 2}
    assert nodes["h100-06"].gpus_allocated == {"h100": 2, "l40s": 0}
    assert nodes["cpu-01"].gpus_total == {}


def test_sinfo_24_11_shards_untyped_gpus_unknown_states() -> None:
    parsed = sinfo.parse(fixture("24.11", "sinfo"))
    assert parsed.errors == 0
    nodes = by_name(parsed.items)
    assert nodes["h100-07"].gpus_total == {"h100": 8}  # shard:h100:32 is not a GPU
    assert nodes["h100-08"].gpus_allocated == {"h100": 4}
    assert nodes["h100-09"].state == "maint"
    assert nodes["h100-10"].flags == {"drain", "not_responding"}
    assert nodes["h100-11"].gpus_total == {"": 8}  # gpu:(null):8(S:0-1)
    assert nodes["h100-11"].gpus_allocated == {"": 0}  # gpu:(null):0(IDX:N/A), as 21.08 prints it
    assert nodes["h100-13"].gpus_allocated == {"": 8}  # gpu:(null):8(IDX:0-7), as 24.05 prints it
    assert nodes["h100-12"].state == "future"
    assert nodes["rtx-gaming-workstation-basement-42"].state == "inval"


def test_sinfo_bad_field_drops_only_that_field() -> None:
    line = "h100-20|gpu*|mixed|mixed|{cpus}|1031000|0|{gres}|{used}|Unknown|none|\n"
    text = (
        line.format(cpus="8/88/0/96", gres="gpu:h100:8(S:0-1)", used="gpu:h100:8(IDX:0-7")  # cut off
        + line.format(cpus="8/x/0/96", gres="gpu:h100:8", used="gpu:h100:1(IDX:0)").replace("h100-20", "h100-21")
    )
    parsed = sinfo.parse(text)
    assert parsed.errors == 2
    nodes = by_name(parsed.items)
    assert set(nodes) == {"h100-20", "h100-21"}
    assert nodes["h100-20"].gpus_total == {"h100": 8} and nodes["h100-20"].gpus_allocated is None
    assert nodes["h100-20"].cpus_total == 96 and nodes["h100-20"].state == "mixed"
    assert nodes["h100-21"].cpus_total is None and nodes["h100-21"].gpus_allocated == {"h100": 1}
    assert nodes["h100-21"].memory_mb == 1031000


def test_sinfo_skips_bad_lines_and_never_raises() -> None:
    text = fixture("22.05", "sinfo") + "garbage\nx|y|z\n\x00\xff|||||||||\n"
    parsed = sinfo.parse(text)
    assert len(parsed.items) == 3
    assert parsed.errors == 3
    assert parsed.samples


def jobs(version: str) -> dict[str, squeue.Job]:
    parsed = squeue.parse(fixture(version, "squeue"))
    return {j.display_id: j for j in parsed.items}


def test_squeue_22_05_recorded_gpu_requests() -> None:
    parsed = squeue.parse(fixture("22.05", "squeue"))
    assert parsed.errors == 0
    by_id = {j.display_id: j for j in parsed.items}
    assert (by_id["1"].gpus, by_id["1"].gpu_type) == (1, "")  # --gres=gpu:1
    assert by_id["2"].gpus == 1  # --gpus=1 (tres-per-job)
    assert (by_id["3"].gpus, by_id["3"].gpu_type) == (2, "h100")  # --gpus-per-node=h100:2
    assert by_id["4"].gpus == 0
    assert by_id["1"].state == "running" and by_id["1"].started
    assert by_id["1"].start_time is not None and by_id["1"].submit_time is not None
    assert by_id["5_2"].job_id == "5" and by_id["5_2"].reason == "JobHeldUser"
    assert by_id["6"].gpus == 4 and by_id["6"].state == "pending" and not by_id["6"].started


def test_squeue_23_11_tres_forms_and_states() -> None:
    by_id = jobs("23.11")
    assert (by_id["4101"].gpus, by_id["4101"].gpu_type) == (2, "a100")  # from tres-alloc
    assert by_id["4102"].gpus == 3
    assert (by_id["4103"].gpus, by_id["4103"].user) == (10, "carol-long-username")
    assert by_id["4104"].gpus == 4  # --gpus-per-task=1 with 4 tasks
    assert by_id["4110_2"].partition == "gpu"
    assert by_id["4120"].partition == "gpu"  # submitted to gpu,long: waits in the first
    assert by_id["4120"].gpus == 32  # 8 per node x 4 nodes
    assert by_id["4121"].reason == "QOSMaxGRESPerUser"
    assert by_id["4130"].state == "completing" and by_id["4130"].started
    assert by_id["4131"].state == "completed" and by_id["4131"].started
    assert by_id["4131"].end_time is not None


def test_squeue_24_11_and_bad_line() -> None:
    parsed = squeue.parse(fixture("24.11", "squeue"))
    assert parsed.errors == 1
    by_id = {j.display_id: j for j in parsed.items}
    assert (by_id["9001"].gpus, by_id["9001"].gpu_type) == (8, "h100")
    assert by_id["9002"].gpus == 2  # --tres-per-task=gres/gpu:1, 2 tasks
    assert by_id["9002"].reason == "ReqNodeNotAvail, UnavailableNodes:h100-10"
    assert squeue.reason_label(by_id["9002"].reason) == "ReqNodeNotAvail"
    assert (by_id["9001"].cpus, by_id["9001"].memory_mb) == (128, 1600000)
    assert by_id["9003_17"].gpus == 2
    assert by_id["9004"].state == "failed"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("22.05", {("1", "vm", 0), ("2", "vm", 1), ("3", "vm", 2), ("3", "vm", 3)}),
        (
            "23.11",
            {("4101", "gpu-node-a100-rack12-slot07", i) for i in (0, 1)}
            | {("4102", "gpu-node-a100-rack12-slot07", i) for i in (2, 3, 4)}
            | {("4103", "h100-02", i) for i in range(8)}
            | {("4103", "h100-06", i) for i in (0, 1)},
        ),
        ("24.11", {("9001", "h100-07", i) for i in range(4)} | {("9001", "h100-08", i) for i in range(4, 8)}),
    ],
)
def test_scontrol_gpu_indices(version: str, expected: set[tuple[str, str, int]]) -> None:
    parsed = scontrol_jobs.parse(fixture(version, "scontrol"))
    assert parsed.errors == 0
    assert {(r.job_id, r.node, r.gpu) for r in parsed.items} == expected


def record_9001(**replace: str) -> str:
    """24.11's running job 9001 (h100-07 GPUs 0-3, h100-08 GPUs 4-7), with lines replaced."""
    record = fixture("24.11", "scontrol").split("\n\n")[0] + "\n\n"
    for old, new in replace.items():
        record = record.replace(old, new)
    return record


def test_scontrol_no_jobs() -> None:
    for text in ("", "No jobs in the system\n"):
        parsed = scontrol_jobs.parse(text)
        assert parsed.items == [] and parsed.errors == 0


def test_scontrol_gpu_type() -> None:
    rows = scontrol_jobs.parse(fixture("23.11", "scontrol")).items
    assert {r.gpu_type for r in rows if r.job_id == "4103"} == {"h100"}


FORGED = "     Nodes=h100-01 CPU_IDs=0 Mem=0 GRES=gpu:h100:8(IDX:0-7)"


@pytest.mark.parametrize(
    ("where", "replace", "errors"),
    [
        # The JobName, on one line: it is part of line 1 and never read.
        ("job name", {"JobName=llm-pretrain": "JobName=x Nodes=h100-01 GRES=gpu:h100:8(IDX:0-7)"}, 0),
        # A newline in the job name: a stray detail line before the block refuses the record.
        ("job name newline", {"JobName=llm-pretrain": f"JobName=x\n{FORGED}"}, 1),
        # A newline in the work dir: a stray detail line after the block.
        ("work dir newline", {"WorkDir=/home/alice": f"WorkDir=/home/alice\n{FORGED}"}, 1),
        # A whole second block in the job name: JOB_GRES twice.
        ("job name block", {"JobName=llm-pretrain": f"JobName=x\n   JOB_GRES=gpu:h100:8\n{FORGED}"}, 1),
    ],
)
def test_scontrol_forged_text_never_adds_gpus(where: str, replace: dict[str, str], errors: int) -> None:
    parsed = scontrol_jobs.parse(record_9001(**replace))
    assert parsed.errors == errors, where
    assert {r.node for r in parsed.items} <= {"h100-07", "h100-08"}, where
    assert len(parsed.items) == (8 if errors == 0 else 0), where


def test_scontrol_forged_record_under_a_real_job_id_is_refused() -> None:
    # Text after a record's block can start a whole new record; under the id of a real job it
    # makes that id appear twice, and both records are refused.
    forged = record_9001(**{"Mem=800000 GRES=gpu:h100:4(IDX:0-3)": "Mem=0 GRES=gpu:h100:8(IDX:0-7)"})
    text = record_9001(**{"StdIn=/dev/null": "StdIn=/dev/null\n\n" + forged.strip()})
    parsed = scontrol_jobs.parse(text)
    assert parsed.items == [] and parsed.errors == 2


def test_job_gpu_map_checks_against_squeue_and_never_emits_a_gpu_twice() -> None:
    jobs = {j.job_id: j for j in squeue.parse(fixture("24.11", "squeue")).items}
    rows = scontrol_jobs.parse(fixture("24.11", "scontrol")).items
    forged = [
        scontrol_jobs.JobGpu("9002", "h100-07", 5, "h100"),  # pending in squeue
        scontrol_jobs.JobGpu("424242", "h100-07", 6, "h100"),  # unknown to squeue
        scontrol_jobs.JobGpu("9001", "h100-01", 0, "h100"),  # running, but not on h100-01
    ]
    accepted, rejected = job_gpu_map(rows + forged, list(jobs.values()))
    assert {(r.node, r.gpu) for r, _ in accepted} == {("h100-07", i) for i in range(4)} | {
        ("h100-08", i) for i in range(4, 8)
    }
    assert {j.user for _, j in accepted} == {"alice"}  # labels come from squeue
    assert rejected == {"job_not_running": 2, "node_not_in_job": 1}
    # Another running job claiming GPU 0 of h100-07 (say scontrol raced a requeue): neither is kept.
    other = squeue.Job(**{**vars(jobs["9001"]), "job_id": "9100", "display_id": "9100", "user": "mallory"})
    accepted, rejected = job_gpu_map(
        [*rows, scontrol_jobs.JobGpu("9100", "h100-07", 0, "h100")], [*jobs.values(), other]
    )
    assert ("h100-07", 0) not in {(r.node, r.gpu) for r, _ in accepted}
    assert len(accepted) == 7 and rejected == {"gpu_claimed_twice": 2}


@pytest.mark.parametrize("version", ["22.05", "23.11", "24.11"])
def test_sdiag(version: str) -> None:
    parsed = sdiag.parse(fixture(version, "sdiag"))
    assert parsed.errors == 0
    stats = parsed.items[0]
    assert "Last cycle" in stats.main and "Mean cycle" in stats.main
    assert "Jobs submitted" in stats.general
    assert "REQUEST_JOB_INFO" in stats.rpc_by_type
    assert "root" in stats.rpc_by_user


def test_sdiag_values_23_11() -> None:
    stats = sdiag.parse(fixture("23.11", "sdiag")).items[0]
    assert stats.main["Last cycle"] == 12043 and stats.main["Last queue length"] == 370
    assert stats.backfill["Mean cycle"] == 402117
    assert stats.backfill["Total backfilled jobs (since last slurm start)"] == 1822
    assert stats.rpc_by_type["REQUEST_PARTITION_INFO"] == (183022, 31296762)
    assert stats.rpc_by_user["alice"] == (3010, 4521020)
    assert stats.general["DBD Agent queue size"] == 2


def test_sdiag_garbage_is_an_error_not_an_exception() -> None:
    parsed = sdiag.parse("sdiag: error: Unable to contact slurm controller\n")
    assert parsed.items == [] and parsed.errors == 1


def test_sshare() -> None:
    parsed = sshare.parse(fixture("23.11", "sshare"))
    assert parsed.errors == 0
    rows = {(s.account, s.user): s for s in parsed.items}
    assert rows[("vision", "bob")].fairshare == 0.625
    assert rows[("ml-research", "")].raw_usage == 820011
    assert sshare.parse(fixture("22.05", "sshare")).items == []


def test_hostlist() -> None:
    assert expand("h100-[07-08]") == ["h100-07", "h100-08"]
    assert expand("gpu[001-002,010],login1") == ["gpu001", "gpu002", "gpu010", "login1"]
    assert expand("rack[1-2]-n[1-2]") == ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    assert expand("(null)") == []
    with pytest.raises(HostlistError):
        expand("gpu[1-")
    with pytest.raises(HostlistError):
        expand("gpu[a-b]")


def test_gres_forms() -> None:
    assert gpus_by_type("gpu:h100:4(S:0-1)") == {"h100": 4}
    assert gpus_by_type("gpu:4") == {"": 4}
    assert gpus_by_type("gpu:a100:2(S:0,1),gpu:h100:1(S:1)") == {"a100": 2, "h100": 1}
    assert gpus_by_type("(null)") == {}
    assert gpus_by_type("gpu:(null):8(IDX:0-7)") == {"": 8}
    assert gpus_by_type("gpu:(null):0(IDX:N/A)") == {"": 0}
    assert parse_gres("gpu:(null):2(IDX:0,3)")[0].indices == (0, 3)  # type: ignore[index]
    assert gpus_by_type("gpu:h100:8(IDX:0-7") is None
    assert gpus_by_type("gpu:h100:no_consume:2") == {"h100": 2}
    assert parse_gres("gpu:h100:2(IDX:0,3)") is not None
    assert parse_gres("gpu:h100:2(IDX:0,3)")[0].indices == (0, 3)  # type: ignore[index]
    assert tres_alloc_gpus("cpu=1,mem=1G,gres/gpu=2,gres/gpu:h100=2") == (2, "h100")
    assert tres_alloc_gpus("cpu=1,mem=1G") is None
    assert tres_request_gpus("gres:gpu:h100:2") == (2, "h100")
    assert tres_request_gpus("gres/gpu:3") == (3, "")
    assert tres_request_gpus("gres/gpu:2,gres/shard:1") == (2, "")
    assert tres_request_gpus("gres/shard:1") is None


def test_parse_stops_at_its_deadline() -> None:
    text = fixture("23.11", "squeue") * 2000
    assert len(squeue.parse(text, deadline=time.monotonic() + 60).items) > 0
    with pytest.raises(ParseTimeout):
        squeue.parse(text, deadline=time.monotonic() - 1)


def test_unreadable_output_is_an_error() -> None:
    check_readable("squeue", squeue.parse(""))  # an empty queue is fine
    check_readable("squeue", squeue.parse(fixture("24.11", "squeue")))  # one bad line in five is fine
    with pytest.raises(UnreadableOutput, match="3 of 3 lines unreadable"):
        check_readable("squeue", squeue.parse("error: junk\n" * 3))
    check_readable("sinfo", sinfo.parse(""))  # no node: a cluster at zero workers
    with pytest.raises(UnreadableOutput, match="nothing readable in 2 lines"):
        check_readable("sinfo", sinfo.parse("<html>\n502 Bad Gateway\n"))
    with pytest.raises(UnreadableOutput, match="nothing readable in 0 lines"):
        check_readable("sdiag", sdiag.parse(""))  # sdiag always prints its statistics
    with pytest.raises(UnreadableOutput, match="no job record"):
        check_readable("scontrol", scontrol_jobs.parse("<html>502</html>\n"))
    # Many records refused for injected text (users can submit those) never fail the poll.
    forged = record_9001(
        **{"JobName=llm-pretrain": "JobName=x\n     Nodes=h100-01 CPU_IDs=0 Mem=0 GRES=gpu:h100:1(IDX:0)"}
    )
    many = "".join(forged.replace("JobId=9001 ", f"JobId={9100 + i} ") for i in range(5)) + record_9001()
    parsed = scontrol_jobs.parse(many)
    assert parsed.errors == 5 and len(parsed.items) == 8
    check_readable("scontrol", parsed)


def test_reason_label_is_bounded() -> None:
    assert squeue.reason_label("ReqNodeNotAvail, UnavailableNodes:gpu-[01-40],h100-[001-999]") == "ReqNodeNotAvail"
    assert squeue.reason_label("Dependency") == "Dependency"
    assert squeue.reason_label("") == "none"
    assert len(squeue.reason_label("x" * 500)) == squeue.MAX_REASON
    long_22_05 = "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
    assert squeue.reason_label(long_22_05) == long_22_05[: squeue.MAX_REASON]


def test_tres_cpus_memory() -> None:
    assert tres_cpus_memory("cpu=16,mem=64G,node=1,billing=16,gres/gpu=2") == (16, 64 * 1024)
    assert tres_cpus_memory("cpu=1,mem=100M,node=1") == (1, 100)
    assert tres_cpus_memory("") == (0, 0.0)
    assert [parse_mebibytes(v) for v in ("16000", "100M", "8G", "1.5T", "512K")] == [
        16000,
        100,
        8192,
        1.5 * 1024**2,
        0.5,
    ]


def test_reservations() -> None:
    recorded = reservations.parse(fixture("22.05", "reservations"))
    assert recorded.errors == 0
    by_name = {r.name: r for r in recorded.items}
    assert by_name["maint-psu"].maintenance and by_name["maint-psu"].state == "inactive"
    assert by_name["maint-psu"].end - by_name["maint-psu"].start == 2 * 3600
    assert not by_name["training"].maintenance and by_name["training"].nodes == "fake0002"
    shaped = {r.name: r for r in reservations.parse(fixture("24.11", "reservations")).items}
    assert shaped["llm-eval"].node_count == 2 and shaped["fw-update"].maintenance
    assert reservations.parse(fixture("23.11", "reservations")).items == []
    assert reservations.parse("ReservationName=x StartTime=junk\n").errors == 1


def test_licenses() -> None:
    recorded = licenses.parse(fixture("22.05", "licenses"))
    assert {(x.name, x.total, x.used, x.free) for x in recorded.items} == {("matlab", 10, 3, 7), ("fluent", 2, 0, 2)}
    shaped = {x.name: x for x in licenses.parse(fixture("24.11", "licenses")).items}
    assert (shaped["ansys@flex"].used, shaped["ansys@flex"].reserved) == (40, 10)
    assert licenses.parse(" No licenses configured in Slurm.\n").items == []
    assert licenses.parse("junk\n").errors == 1


@pytest.mark.parametrize(
    "text", ["2024-05-01T10:00:00", "2025-02-03T06:12:40", "2024-03-31T02:30:00", "2024-12-31T23:59:59"]
)
def test_parse_time_matches_strptime(text: str) -> None:
    assert parse_time(text) == time.mktime(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timetuple())


@pytest.mark.parametrize(
    "text", ["Unknown", "N/A", "", "2024-13-01T10:00:00", "2024-05-01T10:00:0x", "2024-05-01 10:00:00"]
)
def test_parse_time_rejects(text: str) -> None:
    assert parse_time(text) is None


def test_gpus_of_a_node_one_job_has_to_itself_come_from_sinfo() -> None:
    jobs = squeue.parse(fixture("24.11", "squeue")).items
    nodes = sinfo.parse(fixture("24.11", "sinfo")).items
    rows, undecided = from_sinfo(jobs, nodes)
    assert undecided == set()
    assert {(r.job_id, r.node, r.gpu) for r in rows} == set(scontrol_jobs_rows("24.11"))
    # Two running GPU jobs on one node (23.11's a100 node): the detail must come from scontrol.
    rows, undecided = from_sinfo(
        squeue.parse(fixture("23.11", "squeue")).items, sinfo.parse(fixture("23.11", "sinfo")).items
    )
    assert rows == [] and {"4101", "4102"} <= undecided
    # GresUsed disagreeing with the job's GPU count (a job started between squeue and sinfo).
    busier = [
        n if n.name != "h100-07" else sinfo.Node(**{**vars(n), "gpu_indices_used": {"h100": (0, 1, 2, 3, 4)}})
        for n in nodes
    ]
    rows, undecided = from_sinfo(jobs, busier)
    assert rows == [] and undecided == {"9001"}


def scontrol_jobs_rows(version: str) -> list[tuple[str, str, int]]:
    return [(r.job_id, r.node, r.gpu) for r in scontrol_jobs.parse(fixture(version, "scontrol")).items]


def test_scontrol_only_reads_the_job_asked_for() -> None:
    # `scontrol -d show job 9001` whose work dir injects a whole record for job 9100.
    forged = record_9001(**{"JobId=9001 ": "JobId=9100 ", "IDX:0-3": "IDX:4-7"}).strip()
    text = record_9001(**{"WorkDir=/home/alice": "WorkDir=/home/alice\n\n" + forged})
    parsed = scontrol_jobs.parse(text, only="9001")
    assert {r.job_id for r in parsed.items} == {"9001"} and len(parsed.items) == 8
