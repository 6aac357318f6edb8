"""The safetensors file format, read and written without loading whole files.

A safetensors file is an 8-byte little-endian header length, a JSON header that maps
each tensor name to its dtype, shape and byte range, then the raw data. Parsing the
header ourselves lets us list tensors without touching their data and detect truncated
files before any engine starts; knowing every tensor's size in advance lets a writer
pre-compute the header and stream each tensor straight to its place on disk.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.direct_file import DirectFile
from workbench.errors import CheckpointError

DTYPE_CODES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it looks like, known without reading its data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset of the data in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPE_CODES[self.dtype]

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse a safetensors header and check that the file holds all the data it announces."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise CheckpointError(
                    f"{path}: truncated or not a safetensors file "
                    f"(header claims {header_len} bytes, file has {size})"
                )
            header = json.loads(f.read(header_len))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")

    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: corrupt header entry for tensor '{name}'") from exc
        if code not in DTYPE_CODES:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {code}")
        tensors[name] = TensorInfo(name, code, shape, path, data_start + start, data_start + end)
        data_end = max(data_end, end)
    if data_start + data_end > size:
        raise CheckpointError(
            f"{path}: truncated safetensors file (header needs {data_start + data_end} bytes, "
            f"file has {size})"
        )
    return dict(sorted(tensors.items(), key=lambda item: item[1].start))


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a tensor, without a copy when it is contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


@dataclass
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = torch.empty((), dtype=self.dtype).element_size()
        for dim in self.shape:
            n *= dim
        return n


class ShardFile:
    """One safetensors file whose header is written first and whose tensors are then
    written, in any order, directly at their offsets. Memory use is one tensor."""

    def __init__(self, path: Path, tensors: list[PlannedTensor]):
        self.path = path
        self.offsets: dict[str, tuple[int, int]] = {}
        self.planned = {t.name: t for t in tensors}
        header: dict = {"__metadata__": {"format": "pt"}}
        offset = 0
        for t in tensors:
            header[t.name] = {
                "dtype": CODE_OF_DTYPE[t.dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + t.nbytes],
            }
            self.offsets[t.name] = (offset, offset + t.nbytes)
            offset += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.total_bytes = self.data_start + offset
        self.file = DirectFile(path, self.total_bytes)
        self.file.write_at(0, struct.pack("<Q", len(raw)) + raw)
        self.written: set[str] = set()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        planned = self.planned[name]
        if tuple(tensor.shape) != tuple(planned.shape):
            raise ValueError(f"tensor {name}: shape {tuple(tensor.shape)}, planned {planned.shape}")
        start, _ = self.offsets[name]
        self.file.write_at(self.data_start + start, tensor_bytes(tensor.to(planned.dtype)))
        self.written.add(name)

    def close(self) -> None:
        """Finish the file on disk (fsynced)."""
        self.file.close()

    def abort(self) -> None:
        """Close without finishing: the file is about to be removed."""
        self.file.close(sync=False)
