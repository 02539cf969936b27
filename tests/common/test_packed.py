"""Packed (snapshot.py): a body gzipped once, finished per request with a tail, as one member."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from gpu_watchdog_core.snapshot import Packed


@pytest.mark.parametrize(
    ("body", "tail"),
    [
        (b"# HELP a A\n# TYPE a gauge\na 1.0\n" * 5000, b"age 0.25\n"),
        (b"", b"age 0.25\n"),
        (b"x\n", b""),
        (os.urandom(300_000), os.urandom(70_000)),  # incompressible: stored blocks
    ],
)
def test_gzip_with_is_one_member_equal_to_body_and_tail(body: bytes, tail: bytes) -> None:
    packed = Packed.of(body)
    assert packed.crc == zlib.crc32(body)
    stream = packed.gzip_with(tail)
    reader = zlib.decompressobj(31)
    assert reader.decompress(stream) == body + tail
    assert reader.eof and not reader.unused_data  # zlib checked the trailer's CRC and size
    assert gzip.decompress(stream) == body + tail
    assert stream.startswith(packed.gzip_prefix)


def test_a_wrong_crc_is_caught_by_the_reader() -> None:
    packed = Packed.of(b"a 1\n" * 100)
    broken = Packed(packed.body, packed.gzip_prefix, packed.crc ^ 1)
    with pytest.raises(zlib.error):
        zlib.decompressobj(31).decompress(broken.gzip_with(b"tail\n"))
