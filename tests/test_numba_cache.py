"""Numba's on-disk cache with several processes writing at once (minialbert/numba_cache.py).

Six processes each save 30 signatures of one function into one cache directory, all
starting at the same moment, as two fresh MPI ranks or two test workers compiling the same
kernels do. Afterwards every signature must load its own data. Without the lock, on a
2-core machine, 116 of the 180 entries came back wrong or missing (an index entry naming
another signature's data file, or lost when another process wrote the index back).
"""
import pathlib
import subprocess
import sys
import textwrap
import time

import minialbert  # noqa: F401  (installs the lock)
from minialbert import numba_cache

WORKER = textwrap.dedent("""
    import importlib.util, sys, time
    path, who, start, module = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    spec = importlib.util.spec_from_file_location("numba_cache", module)
    nc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nc)  # the module alone: no kernels loaded
    assert nc.install()
    from numba.core.caching import IndexDataCacheFile
    cf = IndexDataCacheFile(path, "f-1.py311", ("stamp", 1))
    while time.time() < start:  # all of them at once
        pass
    for i in range(30):
        cf.save(("signature", who, i), ("machine code of", who, i))
""")


def test_minialbert_installs_the_lock():
    from numba.core.caching import IndexDataCacheFile
    assert IndexDataCacheFile.save is numba_cache._locked_save


def test_six_processes_saving_at_once_lose_nothing(tmp_path):
    from numba.core.caching import IndexDataCacheFile
    cache = tmp_path / "cache"
    cache.mkdir()
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(cache), str(w), str(start),
                               numba_cache.__file__]) for w in range(6)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    cf = IndexDataCacheFile(str(cache), "f-1.py311", ("stamp", 1))
    wrong = [(w, i) for w in range(6) for i in range(30)
             if cf.load(("signature", w, i)) != ("machine code of", w, i)]
    assert not wrong, f"{len(wrong)} of 180 entries wrong or missing, e.g. {wrong[:5]}"
    assert (cache / numba_cache.LOCK_NAME).exists()
    assert len(list(cache.glob("*.nbc"))) == 180  # one data file per signature


def test_a_saved_entry_is_never_without_its_data(tmp_path):
    """The data file is written before the index names it: an index read at any moment
    only names files that are there."""
    from numba.core.caching import IndexDataCacheFile
    cf = IndexDataCacheFile(str(tmp_path), "g-2.py311", ("stamp", 2))
    seen = []
    real_save_index = cf._save_index

    def spy(overloads):  # at the moment the index is written, its files must exist
        seen.append(all((pathlib.Path(tmp_path) / n).exists() for n in overloads.values()))
        real_save_index(overloads)
    cf._save_index = spy
    for i in range(3):
        cf.save(("sig", i), ("data", i))
    assert seen == [True, True, True]
    assert [cf.load(("sig", i)) for i in range(3)] == [("data", i) for i in range(3)]
