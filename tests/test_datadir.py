"""The node's own files in its data directory: any flipped bit is refused with the file named."""

from __future__ import annotations

import pytest
from flips import every_flip

from hraftd.datadir import claim, read_identity, read_secret, write_secret
from hraftd.errors import DataDirError


def test_the_identity_reads_back_and_every_flipped_bit_is_refused(tmp_path):
    identity = claim(tmp_path / "node", "node-é", "127.0.0.1:12000", True, "c0ffee")
    assert read_identity(tmp_path / "node") == identity
    for _ in every_flip(tmp_path / "node" / "node.json"):
        with pytest.raises(DataDirError, match=r"node\.json is damaged"):
            read_identity(tmp_path / "node")
    assert read_identity(tmp_path / "node") == identity


def test_the_secret_reads_back_and_every_flipped_bit_is_refused(tmp_path):
    write_secret(tmp_path, "a-secret-of-thirty-two-characters")
    assert read_secret(tmp_path) == "a-secret-of-thirty-two-characters"
    for _ in every_flip(tmp_path / "raft-secret"):
        with pytest.raises(DataDirError, match="raft-secret is damaged"):
            read_secret(tmp_path)
    assert (tmp_path / "raft-secret").stat().st_mode & 0o777 == 0o600
