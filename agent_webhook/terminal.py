"""Text from alerts, Slurm or the model made safe to print on an operator's terminal.

Label and annotation values are whatever an alert rule or an exporter put there: an escape
sequence in one could retitle the terminal, move the cursor over earlier output, or hide text
(a bidi override). Everything the CLI prints from a finding or a diagnosis goes through here.
"""

from __future__ import annotations

import re

# ESC-introduced sequences (CSI ... final byte, OSC ... BEL/ST, two-byte escapes) as a whole,
# so no parameter bytes are left behind once the ESC is gone.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])?|\x9b[0-?]*[ -/]*[@-~]")
# C0 controls but tab and newline, DEL, C1 controls, and the Unicode bidi overrides/isolates.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str, *, newlines: bool = True) -> str:
    """`text` without terminal control characters; with `newlines=False`, one line."""
    text = _CONTROLS.sub("", _ESCAPES.sub("", text))
    if not newlines:
        text = text.replace("\n", " ").replace("\t", " ")
    return text
