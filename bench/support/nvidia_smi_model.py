"""The nvidia_gpu_exporter model, for bench/gpu_scrape.py: one nvidia-smi subprocess per scrape.

Serves /metrics by running `fake-nvidia-smi --query-gpu=... --format=csv`, parsing the CSV and
rendering it, on every request, as utkuozdemir/nvidia_gpu_exporter does with the real binary.
"""

from __future__ import annotations

import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import exposition
from prometheus_client.core import GaugeMetricFamily

SMI = str(Path(__file__).with_name("fake-nvidia-smi"))
QUERY = "--query-gpu=timestamp,driver_version,name,uuid,pci.bus_id,utilization.gpu,utilization.memory,memory.total"


class _Families:
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


def scrape() -> bytes:
    out = subprocess.run([SMI, QUERY, "--format=csv"], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    families: dict[str, GaugeMetricFamily] = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.split(",")]
        uuid = cells[3]
        for name, cell in zip(header[5:], cells[5:], strict=False):
            number = cell.split(" ")[0]
            try:
                value = float(number)
            except ValueError:
                continue
            metric = "nvidia_smi_" + "".join(ch if ch.isalnum() else "_" for ch in name.split(" ")[0])
            family = families.setdefault(metric, GaugeMetricFamily(metric, name, labels=["uuid"]))
            family.add_metric([uuid], value)
    return exposition.generate_latest(_Families(list(families.values())))  # type: ignore[arg-type]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        body = scrape()
        self.send_response(200)
        self.send_header("Content-Type", exposition.CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
