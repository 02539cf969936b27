"""Prometheus exporters of gpu-watchdog: GPU (NVML), Slurm and RunPod."""
