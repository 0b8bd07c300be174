"""A bucket sort on disk: records larger than memory written out in the order of an integer key.

Used by the image builders to write a split in a chosen order (a seeded permutation, or the
official file order) while reading the source archive in whatever order it comes: each record
goes to the bucket `key * num_buckets // key_space` (a temp file, appended in large buffered
writes, so no more than `buffer_bytes` are held and only one file is open at a time); then each
bucket is read back whole, sorted by (key, tiebreak) and deleted. Bucket i holds keys below
bucket i + 1's, so reading buckets 0, 1, ... gives the records in key order, and one bucket is
one TFDS shard. Why not TFDS's own shuffler: past 1 GB it spills through `tf.io.gfile`, which
needs TensorFlow.

    spill = Spill(tmp_dir, num_buckets=4, key_space=2**64)
    spill.add(key, b"tiebreak", record_bytes)
    for i in spill.nonempty():
        records = spill.take(i)          # sorted by (key, tiebreak), file deleted
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

_HEADER = struct.Struct("<QII")  # key (< 2**64), tiebreak length, record length


class Spill:
    """Records bucketed by key into files under `folder` (created, removed by `take`)."""

    def __init__(
        self, folder: Path, num_buckets: int, key_space: int, *, buffer_bytes: int = 256 << 20
    ):
        if num_buckets < 1 or key_space < 1 or key_space > 2**64:
            raise ValueError(
                f"Spill: need num_buckets >= 1 and 1 <= key_space <= 2**64, "
                f"got {num_buckets}, {key_space}"
            )
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.num_buckets, self.key_space, self.buffer_bytes = num_buckets, key_space, buffer_bytes
        self.counts = [0] * num_buckets
        self._pending: list[list[bytes]] = [[] for _ in range(num_buckets)]
        self._pending_bytes = 0

    def _path(self, bucket: int) -> Path:
        return self.folder / f"bucket-{bucket:05d}.bin"

    def add(self, key: int, tiebreak: bytes, record: bytes) -> None:
        """Queues `record` under `key` (0 <= key < key_space); `tiebreak` orders equal keys."""
        if not 0 <= key < self.key_space:
            raise ValueError(f"Spill.add: key {key} outside [0, {self.key_space})")
        bucket = key * self.num_buckets // self.key_space
        self._pending[bucket].append(_HEADER.pack(key, len(tiebreak), len(record)))
        self._pending[bucket].append(tiebreak)
        self._pending[bucket].append(record)
        self.counts[bucket] += 1
        self._pending_bytes += _HEADER.size + len(tiebreak) + len(record)
        if self._pending_bytes >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Appends every queued record to its bucket's file."""
        for bucket, parts in enumerate(self._pending):
            if parts:
                with open(self._path(bucket), "ab") as f:
                    f.write(b"".join(parts))
                parts.clear()
        self._pending_bytes = 0

    def nonempty(self) -> list[int]:
        """The buckets holding at least one record (flushes first)."""
        self.flush()
        return [i for i, n in enumerate(self.counts) if n]

    def take(self, bucket: int) -> Iterator[bytes]:
        """The records of `bucket` sorted by (key, tiebreak); its file is deleted once read."""
        path = self._path(bucket)
        data = path.read_bytes()
        path.unlink()
        entries, pos = [], 0
        while pos < len(data):
            key, n_tie, n_rec = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size
            tie = data[pos : pos + n_tie]
            pos += n_tie
            entries.append((key, tie, pos, pos + n_rec))
            pos += n_rec
        entries.sort(key=lambda e: (e[0], e[1]))
        view = memoryview(data)
        for _key, _tie, start, stop in entries:
            yield bytes(view[start:stop])
