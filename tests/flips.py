"""Bit flips for the tests that prove damaged files are refused."""

from collections.abc import Iterator
from pathlib import Path


def every_flip(path: Path) -> Iterator[None]:
    """Flip each bit of ``path`` in turn, yielding while it is flipped; put the file back afterwards."""
    original = path.read_bytes()
    for offset in range(len(original)):
        for bit in range(8):
            damaged = bytearray(original)
            damaged[offset] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            yield
    path.write_bytes(original)
