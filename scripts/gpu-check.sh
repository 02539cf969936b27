#!/usr/bin/env bash
# `make gpu-check`: the GPU exporter against a real NVIDIA driver, printing the figures to record
# in docs/gpu-exporter.md ("Real GPUs"). Runs only where nvidia-smi and NVML work; never run
# here in CI (no GPU). Steps: driver/GPU identity, `pytest -m gpu`, bench/gpu_scrape.py
# --backend nvml, promtool on a real scrape, and (opt-in, GPU_CHECK_RESET=<index>, root, an idle
# GPU) the lost-GPU path provoked with a GPU reset.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
BIN=$(dirname "$PY")

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no working NVIDIA driver here (nvidia-smi -L failed); nothing to check" >&2
  exit 2
fi
echo "== driver and GPUs"
nvidia-smi --query-gpu=index,name,driver_version,pci.bus_id,serial --format=csv
gpus=$(nvidia-smi -L | wc -l)
"$PY" -c 'import pynvml; print("nvidia-ml-py", pynvml.__file__)'

echo "== pytest -m gpu"
"$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider

echo "== benchmark, real NVML, $gpus GPU(s)"
"$PY" bench/gpu_scrape.py --backend nvml --gpus "$gpus" --no-smi-model || echo "(benchmark floor missed; figures above)"

echo "== promtool check metrics on a real scrape"
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$BIN/gpu-exporter" --backend nvml --interval 1 --listen "127.0.0.1:$port" --log-level warning &
exporter=$!
trap 'kill "$exporter" 2>/dev/null || true' EXIT
for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$port/metrics" -o /tmp/gpu-check.metrics && break
  sleep 0.5
done
sleep 3  # GPM needs two cycles
curl -sf "http://127.0.0.1:$port/metrics" -o /tmp/gpu-check.metrics
promtool check metrics < /tmp/gpu-check.metrics
echo "series: $(grep -vc '^#' /tmp/gpu-check.metrics), bytes: $(wc -c < /tmp/gpu-check.metrics)"
grep -E '^(nvidia_gpu_up|nvidia_gpu_down_reason|gpu_exporter_field_errors_total|gpu_exporter_nvml_calls|nvidia_gpu_sm_active_ratio|gpu_exporter_xid_events_registered)' /tmp/gpu-check.metrics || true

if [ -n "${GPU_CHECK_RESET:-}" ]; then
  echo "== lost-GPU path: resetting GPU $GPU_CHECK_RESET (must be idle; needs root)"
  nvidia-smi -i "$GPU_CHECK_RESET" -r || echo "(reset refused: not provoked)"
  sleep 3
  curl -sf "http://127.0.0.1:$port/metrics" | grep -E "^(nvidia_gpu_up|nvidia_gpu_down_reason|gpu_exporter_xid_wait_errors_total|gpu_exporter_xid_events_registered)\{.*gpu=\"$GPU_CHECK_RESET\"|^gpu_exporter_xid_wait_errors_total" || true
else
  echo "== lost-GPU path: not provoked (set GPU_CHECK_RESET=<idle GPU index> as root to reset one)"
fi
