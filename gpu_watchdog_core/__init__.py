"""The shared core of gpu-watchdog's programs: what every exporter and the agent serve and log with.

HTTP serving with web config (TLS, basic auth, headers) and connection limits (`server`,
`webconfig`, `openssl`, `limits`), structured logs and redaction of credentials (`logs`),
config section checks (`sections`), the shared CLI flags and start-up errors (`cli`), and the
exporters' snapshot poller and renderer (`poller`, `snapshot`). It imports nothing from
`exporters` or `agent_webhook` (tests/test_layers.py); see docs/architecture.md.
"""
