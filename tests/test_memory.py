"""memory.keep_freed_memory: a freed block, of any size, is reused by the next allocation
of that size without a page fault (each run in a fresh process: the setting is the
process's allocator)."""
import subprocess
import sys

import pytest

CODE = """
import resource, sys, numpy as np
if sys.argv[1] == "keep":
    from minialbert.memory import keep_freed_memory
    assert keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(12 << 20, np.float32); del a  # 48 MiB, above glibc's largest mmap threshold
f0 = faults()
for _ in range(5):  # as a step allocates, fills and frees its largest activations
    a = np.empty(12 << 20, np.float32); a[:] = 1; del a
print(faults() - f0)
"""


def _faults(mode):
    r = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_of_48_mib_is_reused_without_page_faults():
    kept = _faults("keep")
    assert kept < 50, kept  # the pages of the first block, reused five times
    # without the setting the same loop faults its pages in again every time (the test
    # can fail: a 32 MiB mmap threshold alone, the first version, gave this too)
    assert _faults("plain") > 10 * max(kept, 10)
