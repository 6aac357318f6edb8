"""DirectFile: the bytes on disk are the bytes written, whatever the order, block size or
filesystem, and in-order bytes go to the device direct where the filesystem allows it."""

import errno
import fcntl
import os

import pytest
import torch

from workbench import direct_file
from workbench.checkpoint import Checkpoint, CheckpointWriter, compute_fingerprint
from workbench.direct_file import DirectFile
from workbench.safetensors_io import PlannedTensor

BLOCK = 8192  # small blocks, so a few KB cross several of them


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(direct_file, "BLOCK_BYTES", BLOCK)


@pytest.fixture
def direct_writes(monkeypatch):
    """The offsets of every write that went to a direct descriptor."""
    seen = []
    pwrite = os.pwrite

    def spy(fd, data, offset):
        if any(f.direct_fd == fd for f in open_files):
            seen.append(offset)
        return pwrite(fd, data, offset)

    open_files = []
    init = DirectFile.__init__

    def tracked_init(self, *args):
        init(self, *args)
        open_files.append(self)

    monkeypatch.setattr(DirectFile, "__init__", tracked_init)
    monkeypatch.setattr(os, "pwrite", spy)
    return seen


def pieces(sizes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (n,), dtype=torch.uint8, generator=generator).numpy().tobytes() for n in sizes]


def offsets_of(parts):
    offsets, at = [], 0
    for part in parts:
        offsets.append(at)
        at += len(part)
    return offsets


def filesystem_allows_direct(directory) -> bool:
    probe = directory / "probe"
    probe.touch()
    fd = direct_file._open_direct(probe)
    if fd is not None:
        os.close(fd)
    return fd is not None


def test_in_order_bytes_are_sent_direct_in_whole_blocks(tmp_path, small_blocks, direct_writes):
    parts = pieces([13, 5000, 9000, 1, 20000, 777])
    path = tmp_path / "out.bin"
    file = DirectFile(path, sum(map(len, parts)))
    allowed = filesystem_allows_direct(tmp_path)
    if allowed:
        assert fcntl.fcntl(file.direct_fd, fcntl.F_GETFL) & os.O_DIRECT
    for offset, part in zip(offsets_of(parts), parts):
        file.write_at(offset, part)
    file.close()
    assert path.read_bytes() == b"".join(parts)
    whole_blocks = sum(map(len, parts)) // BLOCK
    assert direct_writes == ([i * BLOCK for i in range(whole_blocks)] if allowed else [])


@pytest.mark.parametrize("order", [[5, 4, 3, 2, 1, 0], [0, 1, 3, 2, 4, 5], [2, 0, 1, 3, 5, 4]])
def test_any_write_order_gives_the_same_file(tmp_path, small_blocks, order):
    parts = pieces([100, 9000, 3, 16384, 5000, 11], seed=1)
    offsets = offsets_of(parts)
    path = tmp_path / "out.bin"
    file = DirectFile(path, sum(map(len, parts)))
    for i in order:
        file.write_at(offsets[i], parts[i])
    file.close()
    assert path.read_bytes() == b"".join(parts)


def test_a_filesystem_that_refuses_direct_writes_gets_ordinary_ones(tmp_path, small_blocks, monkeypatch):
    """O_DIRECT accepted at open but refused at the write (EINVAL): the block is written
    again through the ordinary descriptor and the rest follows it there."""
    pwrite = os.pwrite
    refused = []

    def refuse_direct(fd, data, offset):
        if fd not in ordinary:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return pwrite(fd, data, offset)

    monkeypatch.setattr(direct_file, "_open_direct", lambda path: os.open(path, os.O_WRONLY))
    parts = pieces([3000, 30000, 5], seed=2)
    path = tmp_path / "out.bin"
    file = DirectFile(path, sum(map(len, parts)))
    ordinary = {file.fd}
    monkeypatch.setattr(os, "pwrite", refuse_direct)
    for offset, part in zip(offsets_of(parts), parts):
        file.write_at(offset, part)
    file.close()
    assert refused == [0]
    assert path.read_bytes() == b"".join(parts)


def test_no_direct_io_on_the_platform(tmp_path, small_blocks, monkeypatch, direct_writes):
    monkeypatch.setattr(direct_file, "_open_direct", lambda path: None)
    parts = pieces([20000, 7], seed=3)
    path = tmp_path / "out.bin"
    file = DirectFile(path, sum(map(len, parts)))
    for offset, part in zip(offsets_of(parts), parts):
        file.write_at(offset, part)
    file.close()
    assert path.read_bytes() == b"".join(parts)
    assert direct_writes == []


def test_a_checkpoint_written_direct_reads_back_bitwise(tmp_path, small_blocks):
    """Shards of a CheckpointWriter go through DirectFile: what safetensors reads back is what
    was written, in several dtypes and unaligned sizes, and the streamed fingerprint is the
    fingerprint of the files on disk."""
    generator = torch.Generator().manual_seed(4)
    tensors = {"a.weight": torch.randn(37, 29, generator=generator).to(torch.bfloat16),
               "b.weight": torch.randn(1000, 3, generator=generator),
               "c.bias": torch.randn(7, generator=generator).to(torch.float16),
               "d.ids": torch.arange(5, dtype=torch.int64)}
    plan = [PlannedTensor(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    with CheckpointWriter(tmp_path / "ckpt", plan, config=config, max_shard_bytes=9000) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        written = writer.commit({})
    assert len(list(written.path.glob("*.safetensors"))) > 1
    for name, tensor in tensors.items():
        assert torch.equal(written.read(name), tensor)
    assert compute_fingerprint(Checkpoint(written.path)) == written.fingerprint()
