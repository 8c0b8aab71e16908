"""A sequential tar member reader for the stream loader: webdataset's `tar_file_iterator` without tarfile's cost.

webdataset reads a shard with `tarfile.open(fileobj=stream, mode="r|*")`: Python's tarfile parses every 512-byte
header field by field and copies each member through 10 KB chunks. A webdataset sample is 3-4 members (payload,
cls, idx, crc32), so on small samples (3D volumes of ~100 KB) that parsing costs as much as decoding the sample.
This reader parses a header with one checksum sum and one slice per field and reads a member with one `read`, from
the same stream (gopen's: a local file, a `pipe:` command, http), front to back, never seeking.

It reads what tar writers put in webdataset shards: ustar/pax/GNU headers (pax `path`/`size` records, GNU long
names), regular files yielded, everything else skipped. A stream that does not start with a valid uncompressed tar
header (gzip, bz2, xz, ...) is handed to webdataset's own `tar_file_iterator` unchanged; a header whose checksum
fails later is an error naming the offset (tarfile raises there too).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

BLOCK = 512
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: names it never yields


class TarFormatError(ValueError):
    """A tar header that is not one (its checksum fails, or the stream ends inside a member)."""


class _Replay:
    """A stream whose first bytes were read already: hands them out again, then reads on."""

    def __init__(self, head: bytes, stream: Any):
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n is None or n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out + (self.stream.read(n - len(out)) if len(out) < n else b"")


def _read(stream: Any, n: int) -> bytes:
    """Exactly n bytes, or fewer at the end of the stream (a pipe may return short reads)."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _number(field: bytes) -> int:
    """A header number: octal digits (NUL/space padded) or GNU base-256 (high bit set)."""
    if field[:1] and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.strip(b"\0 ")
    return int(digits, 8) if digits else 0


def _valid(header: bytes) -> bool:
    try:
        stored = _number(header[148:156])
    except ValueError:
        return False
    return stored == sum(header[:148]) + sum(header[156:]) + 8 * 32


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header: "LEN key=value\\n" each."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + name if prefix else name
    return name.decode("utf-8", "surrogateescape")


def tar_members(stream: Any) -> Iterator[dict[str, Any]]:
    """{"fname", "data"} of each regular file of the tar on `stream`, in order (webdataset's tar_file_iterator's
    output: meta names like `__key__` skipped)."""
    first = _read(stream, BLOCK)
    if not first:  # a tar has at least its end blocks: a failed command or download (tarfile: "empty file")
        raise TarFormatError(
            "the stream is empty (the shard's command or download failed, or the file is empty)"
        )
    if any(first) and (len(first) < BLOCK or not _valid(first)):  # compressed, or no tar: the library's way
        from webdataset.tariterators import tar_file_iterator

        yield from tar_file_iterator(_Replay(first, stream))
        return
    header, offset, pending = first, 0, {}
    while len(header) == BLOCK and any(header):
        if not _valid(header):
            raise TarFormatError(f"invalid tar header at byte {offset} (checksum); the shard is corrupt")
        kind, size = header[156:157], _number(header[124:136])
        name = _name(header)
        if "path" in pending or "size" in pending:
            name, size = pending.get("path", name), int(pending.get("size", size))
        data = _read(stream, size)
        if len(data) < size:
            raise TarFormatError(f"the stream ends inside member {name!r} ({len(data)} of {size} bytes)")
        _read(stream, -size % BLOCK)
        offset += BLOCK + size + (-size % BLOCK)
        if kind in (b"x", b"L"):
            pending = _pax(data) if kind == b"x" else {"path": data.split(b"\0", 1)[0].decode("utf-8")}
        else:
            pending = {}
            if kind in (b"0", b"\0", b"7") and not _META.match(name):
                yield {"fname": name, "data": data}
        header = _read(stream, BLOCK)
    if 0 < len(header) < BLOCK:
        raise TarFormatError(f"the stream ends inside a tar header at byte {offset}")


def tar_samples(urls: list[dict[str, Any]], handler) -> Iterator[dict[str, Any]]:
    """webdataset's `tarfile_samples` (url_opener -> tar_file_expander -> group_by_keys), its member reader
    replaced by tar_members: the same samples with the same `__key__`/`__url__`, errors through `handler`."""
    from webdataset.tariterators import group_by_keys, url_opener

    def expand(sources):
        for source in sources:
            try:
                for member in tar_members(source["stream"]):
                    member["__url__"] = source["url"]
                    yield member
                yield {}  # end of shard: group_by_keys keeps samples of different shards apart
            except Exception as exn:
                exn.args = (*exn.args, source.get("stream"), source.get("url"))
                if not handler(exn):
                    break

    return group_by_keys(expand(url_opener(urls, handler=handler)), handler=handler)
