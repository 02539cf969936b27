"""Pure parsers for Slurm command output: text in, dataclasses plus a count of skipped lines out.

No parser raises on bad input: a line it cannot read is counted in `errors` and skipped, so one
odd node or job never costs the whole snapshot.
"""
