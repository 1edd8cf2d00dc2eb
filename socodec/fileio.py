"""Files written atomically, and ``torch.save`` archives read without torch.

**Atomic writing** (the token writers, the audio writer and the CLI):

A file is first written to a hidden temporary file in the target's own
directory (``.<stem>.tmp-<pid>-<random><suffix>``, keeping the suffix so that
writers which infer the format from it still work) and then moved over the
target with :func:`os.replace`, which is atomic on POSIX and Windows within one
file system. If writing fails, the temporary file is removed and the target is
left untouched: readers never see a partial file.

**torch.save archives** (:func:`read_torch_archive`): the zip archive ``torch.save`` writes
(``data.pkl`` and its ``data/<key>`` storage records) read into numpy arrays by a restricted
unpickler, so that token files load without importing torch; :func:`write_torch_archive` writes
such an archive of plain data and numpy arrays, laid out as ``torch.save`` lays it out (its records,
their order, storages aligned to 64 bytes), so that ``torch.load`` (``mmap=True`` too) reads it.
"""

from __future__ import annotations

import errno
import io
import logging
import math
import os
import pickle
import pickletools
import secrets
import struct
import zipfile
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from numpy.lib.stride_tricks import as_strided

logger = logging.getLogger(__name__)


def temp_path_for(path: str | Path) -> Path:
    """A fresh hidden temporary path next to ``path`` with the same suffix (nothing is created)."""
    p = Path(path)
    return p.with_name(f".{p.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{p.suffix}")


def write_reason(exc: BaseException) -> str:
    """Why a write failed, in a few words: a full disk (or a file-size limit) is said as such.

    Works for ``OSError`` with an errno and for libraries that only put the system's
    message in their text (pyarrow's ``OSError``, libsndfile).
    """
    text = " ".join(str(exc).split())
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "Disk quota" in text:
        return "No space left on device"
    if code == errno.EFBIG or "File too large" in text:
        return "File too large (beyond a size limit of this file system or of this process)"
    return text or type(exc).__name__


def _fsync_file(path: Path) -> None:
    """Flush ``path`` to stable storage where the file system supports it (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. EINVAL on file systems without fsync support
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    """Delete ``path`` if it exists, logging (not raising) on failure."""
    if not os.path.lexists(path):  # never created (e.g. the write failed before opening it)
        return
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove temporary file %s: %s", path, exc)


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; it replaces ``path`` on clean exit.

    The body must create the temporary file. On an exception inside the body (or
    if the final :func:`os.replace` fails) the temporary file is removed, the
    exception propagates and ``path`` is unchanged. The parent directory must exist.

    Example::

        with atomic_path("out.wav") as tmp:
            soundfile.write(tmp, audio, 16000)
    """
    target = Path(path)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        _remove_quietly(tmp)
        raise
    logger.debug("wrote %s atomically", target)


def atomic_write(path: str | Path, write_fn: Callable[[Path], object], *, fsync: bool = True) -> Path:
    """Write ``path`` atomically: ``write_fn(tmp)`` writes a temporary file that then replaces ``path``.

    Args:
        path: the final file. Its parent directory must exist.
        write_fn: called once with the temporary path (same directory and suffix
            as ``path``); it must create that file. Its return value is ignored.
        fsync: flush the temporary file to disk before the rename.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write_fn`` raises, or :class:`OSError` from the rename; in
        both cases no temporary file is left behind and ``path`` is unchanged.
    """
    target = Path(path)
    with atomic_path(target, fsync=fsync) as tmp:
        write_fn(tmp)
    return target


def is_plain_int(value: object) -> bool:
    """True for a plain integer (``bool`` excluded): what untrusted files and JSON must hold for counts."""
    return isinstance(value, int) and not isinstance(value, bool)


#: torch dtypes a plain archive may hold -> numpy type codes
_TORCH_DTYPES = {"int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "uint16": "u2",
              "uint32": "u4", "uint64": "u8", "float64": "f8", "float32": "f4", "float16": "f2"}
#: torch's storage classes (the pickle names one per tensor) -> their dtype
_TORCH_STORAGES = {"LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
                "ByteStorage": "uint8", "DoubleStorage": "float64", "FloatStorage": "float32",
                "HalfStorage": "float16", "UntypedStorage": "uint8"}
#: pickle opcodes of plain data that torch's weights_only unpickler knows too (no BUILD, NEWOBJ, sets)
_PLAIN_OPCODES = frozenset("""PROTO STOP MARK GLOBAL REDUCE BINPERSID NONE NEWTRUE NEWFALSE BININT BININT1 BININT2
    LONG1 BINFLOAT BINUNICODE EMPTY_DICT SETITEM SETITEMS EMPTY_LIST APPEND APPENDS EMPTY_TUPLE TUPLE TUPLE1
    TUPLE2 TUPLE3 BINPUT LONG_BINPUT BINGET LONG_BINGET""".split())


class NotPlainArchive(Exception):
    """The file holds something :func:`read_torch_archive` does not read (torch may still read it)."""


@dataclass(frozen=True)
class _TorchType:
    """A torch dtype or storage class named in the pickle, by the numpy type code of its elements."""

    code: str


@dataclass(frozen=True)
class _TorchStorage:
    """One ``data/<key>`` record: its bytes, and the element type the pickle named for it."""

    kind: _TorchType
    data: bytes


def _ints(value: object) -> tuple[int, ...]:
    """``value`` as a tuple of non-negative ints (sizes, strides)."""
    if not isinstance(value, tuple) or not all(is_plain_int(v) and v >= 0 for v in value):
        raise NotPlainArchive(f"sizes or strides {value!r}"[:100])
    return value


def _empty(value: object) -> bool:
    """None or an empty dict (a tensor's backward hooks, its metadata)."""
    return value is None or (isinstance(value, dict) and not value)


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a ``data.pkl`` of plain data and dense tensors, each tensor as a new numpy array.

    Only the globals of such a file are known (:meth:`find_class`): anything else raises
    :class:`NotPlainArchive` before it could be called.

    Args:
        data: the pickle; record: ``record(key, nbytes)`` the bytes of ``data/<key>``; order: ``"<"`` or ``">"``.
    """

    def __init__(self, data: bytes, record: Callable[[str, int], bytes], order: str) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self._record, self._order = record, order
        self._storages: dict[str, _TorchStorage] = {}
        self.arrays: list[np.ndarray] = []  #: the tensors read, read-only until :meth:`load` returns

    def load(self) -> Any:
        obj = super().load()
        for array in self.arrays:
            array.flags.writeable = True
        return obj

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return self._rebuild_v3 if name.endswith("v3") else self._rebuild_v2
        if module in ("torch", "torch.storage") and name in _TORCH_STORAGES:
            return _TorchType(_TORCH_DTYPES[_TORCH_STORAGES[name]])
        if module == "torch" and name in _TORCH_DTYPES:
            return _TorchType(_TORCH_DTYPES[name])
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise NotPlainArchive(f"pickle global {module}.{name}"[:200])

    def persistent_load(self, pid: Any) -> _TorchStorage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise NotPlainArchive("a persistent id other than a storage")
        _, kind, key, location, numel = pid
        if not (isinstance(kind, _TorchType) and isinstance(key, str) and isinstance(location, str)
                and is_plain_int(numel) and numel >= 0):
            raise NotPlainArchive(f"storage {pid!r}"[:200])
        if key not in self._storages:  # as torch: a storage named again is the one read first
            self._storages[key] = _TorchStorage(kind, self._record(key, numel * np.dtype(kind.code).itemsize))
        return self._storages[key]

    def _rebuild_v2(self, storage: object, offset: object, size: object, stride: object,
                    requires_grad: bool = False, hooks: object = None, metadata: object = None) -> np.ndarray:
        if not isinstance(storage, _TorchStorage):
            raise NotPlainArchive("a tensor without a storage")
        return self._rebuild_v3(storage, offset, size, stride, requires_grad, hooks, storage.kind, metadata)

    def _rebuild_v3(self, storage: object, offset: object, size: object, stride: object, requires_grad: object,
                    hooks: object, dtype: object, metadata: object = None) -> np.ndarray:
        """The tensor as a C-contiguous native-order array; its extent must lie within its storage."""
        if not (isinstance(storage, _TorchStorage) and isinstance(dtype, _TorchType) and is_plain_int(offset) and offset >= 0
                and isinstance(requires_grad, bool) and _empty(hooks) and _empty(metadata)):
            raise NotPlainArchive("a tensor with hooks, metadata or odd arguments")
        shape, steps = _ints(size), _ints(stride)
        flat = np.frombuffer(storage.data, dtype=np.dtype(dtype.code).newbyteorder(self._order))  # whole elements
        if len(shape) != len(steps) or math.prod(shape) > flat.size:
            raise NotPlainArchive(f"a tensor of shape {list(shape)} on a storage of {flat.size} elements"[:200])
        native = flat.dtype.newbyteorder("=")
        if math.prod(shape) == 0:
            array = np.zeros(shape, dtype=native)
        elif offset + sum((n - 1) * s for n, s in zip(shape, steps)) >= flat.size:
            raise NotPlainArchive(f"a tensor reaching past its storage of {flat.size} elements")
        else:
            view = as_strided(flat[offset:], shape, [s * flat.itemsize for s in steps], writeable=False)
            array = np.array(view, dtype=native, order="C")
        array.flags.writeable = False  # while unpickling: SETITEM must not change it (torch refuses it too)
        self.arrays.append(array)
        return array


def read_torch_archive(path: Path) -> object:
    """The object a ``torch.save`` zip archive holds, without torch: its dense integer and floating point
    tensors as new C-contiguous numpy arrays (little- or big-endian records), the rest as plain data.

    Only plain data is read: a legacy (non-zip) file, any pickle global but tensor rebuilding, storages,
    dtypes and ``OrderedDict``, any other opcode (no BUILD, NEWOBJ, sets), a tensor subclass, hooks, a
    compressed or inconsistent record raise :class:`NotPlainArchive`. Nothing in the file is called, no
    record is read beyond its size in the file, and no tensor holds more elements than its storage.
    """
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise NotPlainArchive("not a zip archive")
    size = path.stat().st_size
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        if infos[0].header_offset:  # torch reads no archive with bytes before it
            raise NotPlainArchive(f"the archive starts at byte {infos[0].header_offset}")
        stored = all(i.compress_type == zipfile.ZIP_STORED and i.compress_size == i.file_size for i in infos)
        if not stored or sum(i.file_size for i in infos) > size:
            raise NotPlainArchive("compressed records, or records larger than the file")
        records = {i.filename: zf.read(i) for i in infos}  # every record, as torch: sizes and CRC checked
    folder = infos[0].filename.split("/", 1)[0]  # as torch: the archive's folder is its first record's

    def record(name: str, nbytes: int | None = None) -> bytes | None:
        """The bytes of ``name``; None when missing, unless its size ``nbytes`` is required."""
        data = records.get(f"{folder}/{name}")
        if nbytes is not None and (data is None or len(data) != nbytes):
            raise NotPlainArchive(f"record {name!r} is not {nbytes} bytes"[:100])
        return data

    version, order, pkl = record("version") or record(".data/version"), record("byteorder"), record("data.pkl")
    if pkl is None or (version or b"").strip() not in (b"1", b"2", b"3") or order not in (None, b"little", b"big"):
        raise NotPlainArchive(f"version {version!r}, byteorder {order!r}, data.pkl {pkl is not None}"[:200])
    if bad := {op.name for op, _, _ in pickletools.genops(pkl)} - _PLAIN_OPCODES:
        raise NotPlainArchive(f"pickle opcodes {sorted(bad)}")
    return _ArchiveUnpickler(pkl, lambda key, n: record(f"data/{key}", n), ">" if order == b"big" else "<").load()


#: dtypes :func:`write_torch_archive` writes -> torch's storage class for them
_STORAGE_OF = {dtype: name for name, dtype in _TORCH_STORAGES.items() if name != "UntypedStorage"}
_ALIGNMENT = 64  #: as torch: every record's data starts at a multiple of this


class _ArchivePickler:
    """``data.pkl`` as torch's pickler writes it (protocol 2): plain data, and each numpy array as
    ``_rebuild_tensor_v2`` of a new storage, whose little-endian bytes are collected in :attr:`storages`."""

    def __init__(self) -> None:
        self.out, self.memo = bytearray(b"\x80\x02"), {}
        self.storages: list[bytes] = []

    def _put(self, key: object = None) -> None:
        """Memoize the object just written (under ``key``, to be written again by :meth:`_get`)."""
        n = len(self.memo)
        self.memo[object() if key is None else key] = n
        self.out += b"q" + bytes([n]) if n < 256 else b"r" + struct.pack("<I", n)

    def _get(self, key: object) -> bool:
        if (n := self.memo.get(key)) is None:
            return False
        self.out += b"h" + bytes([n]) if n < 256 else b"j" + struct.pack("<I", n)
        return True

    def _global(self, module: str, name: str) -> None:
        if not self._get(("global", module, name)):
            self.out += f"c{module}\n{name}\n".encode()
            self._put(("global", module, name))

    def _tuple(self, items: tuple) -> None:
        if not items:
            self.out += b")"
            return
        self.out += b"" if len(items) <= 3 else b"("
        for item in items:
            self.dump(item)
        self.out += b"t" if len(items) > 3 else b"\x85\x86\x87"[len(items) - 1:len(items)]
        self._put()

    def dump(self, obj: object) -> None:
        if obj is None or isinstance(obj, bool):
            self.out += {None: b"N", True: b"\x88", False: b"\x89"}[obj]
        elif isinstance(obj, int):
            if 0 <= obj < 65536:
                self.out += b"K" + bytes([obj]) if obj < 256 else b"M" + struct.pack("<H", obj)
            elif -2**31 <= obj < 2**31:
                self.out += b"J" + struct.pack("<i", obj)
            else:
                encoded = pickle.encode_long(obj)
                self.out += b"\x8a" + bytes([len(encoded)]) + encoded
        elif isinstance(obj, float):
            self.out += b"G" + struct.pack(">d", obj)
        elif isinstance(obj, str):
            if not self._get(("str", obj)):
                encoded = obj.encode("utf-8", "surrogatepass")
                self.out += b"X" + struct.pack("<I", len(encoded)) + encoded
                self._put(("str", obj))
        elif isinstance(obj, (dict, list)):  # as pickle: one item SETITEM / APPEND, more in one batch
            empty, one, batch = b"}su" if isinstance(obj, dict) else b"]ae"
            self.out += bytes([empty])
            self._put()
            self.out += b"(" if len(obj) > 1 else b""
            for item in [x for pair in obj.items() for x in pair] if isinstance(obj, dict) else obj:
                self.dump(item)
            self.out += b"" if not obj else bytes([one if len(obj) == 1 else batch])
        elif isinstance(obj, tuple):
            self._tuple(obj)
        elif isinstance(obj, np.ndarray) and obj.dtype.name in _STORAGE_OF:
            self._array(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} into a torch archive")

    def _array(self, array: np.ndarray) -> None:
        """The tensor of ``array``: a new C-contiguous storage, strides as torch gives them."""
        key, storage = str(len(self.storages)), _STORAGE_OF[array.dtype.name]
        self.storages.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
        strides = [1] * array.ndim
        for i in range(array.ndim - 2, -1, -1):
            strides[i] = strides[i + 1] * max(array.shape[i + 1], 1)
        self._global("torch._utils", "_rebuild_tensor_v2")
        self.out += b"(("
        self.dump("storage")
        self._global("torch", storage)
        for item in (key, "cpu", array.size):
            self.dump(item)
        self.out += b"t"
        self._put()
        self.out += b"Q"
        for item in (0, tuple(array.shape), tuple(strides), False):
            self.dump(item)
        self._global("collections", "OrderedDict")
        self.out += b")R"
        self._put()
        self.out += b"t"
        self._put()
        self.out += b"R"
        self._put()


def _zip_stored(records: list[tuple[str, bytes]]) -> bytes:
    """A zip archive of ``records`` as torch's writer (miniz) lays it out: each record's data aligned by
    padding in its local header's extra field, a data descriptor after it, and a zip64 end record."""
    out, central = bytearray(), bytearray()
    for name, data in records:
        if len(data) >= 0xFFFFFFFF or len(out) >= 0xFFFFFFFF:
            raise ValueError("a torch archive of 4 GiB or more")
        encoded, crc, offset = name.encode(), zlib.crc32(data), len(out)
        pad = -(offset + 30 + len(encoded) + 4) % _ALIGNMENT
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, 0x808, 0, 0, 0, 0, 0, 0, len(encoded), len(extra))
        out += encoded + extra + data + struct.pack("<IIII", 0x08074B50, crc, len(data), len(data))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, 0x808, 0, 0, 0, crc, len(data), len(data),
                               len(encoded), 0, 0, 0, 0, 0, offset) + encoded
    start, n = len(out), len(records)
    out += central
    end64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x2D, 0, 0, n, n, len(central), start)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), start, 0)
    return bytes(out)


def write_torch_archive(obj: dict[str, Any]) -> bytes:
    """The bytes of a ``torch.save`` zip archive of ``obj`` (read back by ``torch.load(weights_only=True)``
    and by :func:`read_torch_archive`), without torch.

    ``obj`` holds plain data (str, int, float, bool, None, lists, tuples and dicts of them) and numpy arrays of
    the dtypes torch has a storage class for (int64/32/16/8, uint8, float64/32/16), each written as a
    tensor of its own storage. Deterministic: the same ``obj`` gives the same bytes.
    """
    pickler = _ArchivePickler()
    pickler.dump(obj)
    pkl = bytes(pickler.out + b".")
    records = [("data.pkl", pkl), (".format_version", b"1"), (".storage_alignment", str(_ALIGNMENT).encode()),
               ("byteorder", b"little")]
    records += [(f"data/{key}", data) for key, data in enumerate(pickler.storages)] + [("version", b"3\n")]
    names, crc = ",".join(name for name, _ in records).encode(), 0
    for _, data in records:
        crc = zlib.crc32(data, crc)
    serial = f"{zlib.crc32(names):020d}{crc:020d}"  # as torch: 40 digits, from the record names and data
    records.append((".data/serialization_id", serial.encode()))
    return _zip_stored([(f"archive/{name}", data) for name, data in records])
