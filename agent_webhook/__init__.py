"""Alertmanager webhook receiver, investigations and the gpu-watchdog CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gpu-watchdog")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
