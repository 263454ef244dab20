"""Numba's on-disk cache of compiled kernels, made to survive a corrupted cache file.

With Numba's own cache, a truncated or scrambled index (``.nbi``) or data (``.nbc``) file makes
every later call of the kernel raise (``UnpicklingError``, "LLVM bitcode parsing error", ...) in
every process, until someone deletes the file by hand; a data file damaged only inside its compiled
code may even load. `RecompilingCache` checks a CRC-32 of every data file it reads, and on any
failure to load an entry it warns, forgets the function's entries and lets Numba compile again,
which rewrites them.
"""

from __future__ import annotations

import pickle
import warnings
import zlib

from numba.core.caching import FunctionCache, IndexDataCacheFile


class CorruptCacheEntry(Exception):
    """A cache data file whose checksum does not match its contents."""


class _CheckedCacheFile(IndexDataCacheFile):
    """Numba's index-and-data files, each data file prefixed with the CRC-32 of its pickle."""

    def _save_data(self, name, data):
        payload = self._dump(data)
        with self._open_for_write(self._data_path(name)) as f:
            f.write(zlib.crc32(payload).to_bytes(4, "little"))
            f.write(payload)

    def _load_data(self, name):
        with open(self._data_path(name), "rb") as f:
            checksum, payload = f.read(4), f.read()
        if len(checksum) != 4 or zlib.crc32(payload) != int.from_bytes(checksum, "little"):
            raise CorruptCacheEntry(f"checksum mismatch in {self._data_path(name)}")
        return pickle.loads(payload)


class RecompilingCache(FunctionCache):
    """A function's disk cache that recompiles instead of failing when an entry cannot be read."""

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file = _CheckedCacheFile(
            cache_path=self._cache_path, filename_base=self._impl.filename_base,
            source_stamp=self._impl.locator.get_source_stamp(),
        )

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:  # any unreadable entry: compile instead
            warnings.warn(
                f"fastsoftmax: the Numba cache entry of {self._py_func.__qualname__} in "
                f"{self._cache_path} could not be loaded ({exc!r}); recompiling it.",
                RuntimeWarning, stacklevel=2,
            )
            try:
                self.flush()  # an empty index: the stale data files are overwritten when saving
            except OSError:
                pass
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception as exc:  # a cache that cannot be written only costs time
            warnings.warn(
                f"fastsoftmax: could not write the Numba cache entry of "
                f"{self._py_func.__qualname__} to {self._cache_path} ({exc!r})",
                RuntimeWarning, stacklevel=2,
            )


def enable(dispatcher) -> None:
    """Give a Numba dispatcher (created with cache=False) a `RecompilingCache`. Numba has no public
    hook for the cache class: this sets the attribute that ``Dispatcher.enable_caching`` sets."""
    dispatcher._cache = RecompilingCache(dispatcher.py_func)
