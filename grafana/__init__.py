"""Grafana dashboards for gpu-watchdog, built with grafana-foundation-sdk (`python -m grafana.generate`).

Not part of the installed wheel: the generator runs from a checkout, and its output (the JSON
under grafana/dashboards/) is what Grafana loads.
"""
