"""pipelines/loaders/tar_stream.py: the stream loader's tar member reader against webdataset's own (tarfile)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from pipelines.loaders.tar_stream import TarFormatError, tar_members, tar_samples

MEMBERS = [("a.cls", b"3"), ("a.jpg", b"x" * 700), ("__meta__", b"m"), ("b.cls", b"4"), ("b.jpg", b"")]


def _tar(path, fmt=tarfile.USTAR_FORMAT, mode="w", members=MEMBERS):
    with tarfile.open(path, mode, format=fmt) as tar:
        tar.addfile(tarfile.TarInfo("folder"))  # not a regular file: skipped by both
        tar.getmember("folder").type = tarfile.DIRTYPE
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_the_same_samples_as_webdataset(tmp_path, fmt, mode):
    long = [
        (f"{'d' * 120}/k{i}.{ext}", b"%d" % i * 300) for i in range(2) for ext in ("cls", "npy")
    ]  # long names
    urls = [{"url": _tar(tmp_path / "s.tar", fmt, mode)}, {"url": _tar(tmp_path / "l.tar", fmt, mode, long)}]
    ours = list(tar_samples([dict(u) for u in urls], wds.reraise_exception))
    assert ours == list(wds.tarfile_samples([dict(u) for u in urls])) and len(ours) == 4
    assert ours[0]["jpg"] == b"x" * 700 and ours[3]["__key__"] == "d" * 120 + "/k1"


def test_a_corrupt_header_or_a_cut_stream_is_named(tmp_path):
    data = Path(_tar(tmp_path / "s.tar")).read_bytes()
    broken = data[:520] + b"\x01" + data[521:]  # inside the header of a.cls (the second)
    with pytest.raises(TarFormatError, match="byte 512"):
        list(tar_members(io.BytesIO(broken)))
    with pytest.raises(TarFormatError, match=r"ends inside member 'a\.jpg'"):
        list(tar_members(io.BytesIO(data[: 2048 + 100])))
    errors = []
    got = list(
        tar_samples([{"url": f"pipe:head -c 2148 {tmp_path / 's.tar'}"}], lambda e: errors.append(e) or True)
    )
    assert [s["__key__"] for s in got] == ["a"] and "s.tar" in str(errors[0].args)


def test_a_failed_command_is_an_error_naming_the_url():
    errors = []
    assert not list(tar_samples([{"url": "pipe:exit 3 # x-000001.tar"}], lambda e: errors.append(e) or True))
    assert len(errors) == 1 and "x-000001.tar" in str(errors[0].args)
