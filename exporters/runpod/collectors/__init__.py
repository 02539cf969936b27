"""One collector per file; each reads the shared per-cycle :class:`~exporters.runpod.source.RunPodSource`."""
