"""A simulated NVML library for tests, demos and CI: same functions, structs and errors as pynvml."""

from __future__ import annotations

from exporters.gpu.sim.faults import Fault, FaultFileError, load_faults, save_faults
from exporters.gpu.sim.library import SimNvml

__all__ = ["Fault", "FaultFileError", "SimNvml", "load_faults", "save_faults"]
