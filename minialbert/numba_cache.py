"""One writer at a time in Numba's on-disk cache.

Numba saves a compiled kernel (``cache=True``) in two files beside the source's
``__pycache__``: an index (``f-123.py311.nbi``: signature -> data-file name) and a data
file per signature (``f-123.py311.1.nbc``, ``.2.nbc``, ...). Saving reads the index, takes
the first free number for a new signature, writes the index back, then the data. Two
processes that compile the same function at once — the two ranks of a fresh
``mpiexec -n 2 minialbert pretrain``, two pytest-xdist workers — can both take number 1
for two different signatures: the index then sends one signature to the other's machine
code, and every later process fails on it ("Invalid use of CPUDispatcher(...)", seen in
this project's CI) until the cache is deleted. (numba/numba#10128 tells of the same race;
the maintainers' suggestion there is a file lock.)

``install()`` makes Numba's save take an exclusive ``flock`` on ``numba-save.lock`` in the
cache directory, re-read the index inside it, and write the data file *before* the index
entry that names it, so a reader (who takes no lock) never finds an entry whose data is
not there yet. The lock is dropped by the kernel if the process dies. Loading is
unchanged: index and data files are each replaced whole (Numba writes a temporary file
and renames it). Where Numba's class is not what this expects (another Numba version),
or there is no ``fcntl`` (Windows), nothing is patched.
"""
import contextlib
import itertools
import os

LOCK_NAME = "numba-save.lock"
_installed = False


@contextlib.contextmanager
def directory_lock(path):
    """An exclusive lock on ``path``/numba-save.lock, held for the ``with`` block (it waits
    for another process's). Without fcntl (Windows) or a writable directory, no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        yield
        return
    try:
        os.makedirs(path, exist_ok=True)
        fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only install: Numba will not write here either
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def _locked_save(self, key, data):
    # numba.core.caching.IndexDataCacheFile.save, one process at a time, data first
    with directory_lock(self._cache_path):
        overloads = self._load_index()
        data_name = overloads.get(key)
        if data_name is not None:  # a signature saved before: its file is replaced whole
            self._save_data(data_name, data)
            return
        taken = set(overloads.values())
        data_name = next(n for n in (self._data_name(i) for i in itertools.count(1))
                         if n not in taken)
        self._save_data(data_name, data)
        overloads[key] = data_name
        self._save_index(overloads)


def install():
    """Patch Numba's cache so that saves are serialised across processes (idempotent).
    Returns True if the patch is in place."""
    global _installed
    if _installed:
        return True
    try:
        import fcntl  # noqa: F401
        from numba.core import caching
    except ImportError:  # pragma: no cover
        return False
    cls = getattr(caching, "IndexDataCacheFile", None)
    needed = ("save", "_load_index", "_save_index", "_save_data", "_data_name")
    if cls is None or not all(hasattr(cls, n) for n in needed):
        return False  # not the class this was written against: leave Numba as it is
    cls.save = _locked_save
    _installed = True
    return True
