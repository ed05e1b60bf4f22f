"""Keep freed memory for the next training step.

A training step allocates and frees the same large arrays every time (activations,
caches, gradients of the activations: ~200 MB a step on the tiny benchmark config). glibc
hands every block above its mmap threshold (128 KiB, rising with use up to 32 MiB) back
to the operating system on free, so the next step's ``np.empty`` of the same size gets
fresh pages: one page fault and one zeroed page per 4 KiB when a kernel first writes it.
Measured on the tiny config (B32 x T128, 2-core Zen 4): 50,000 faults and ~100 ms of
system time a step, about a tenth of the step's wall time.

``keep_freed_memory()`` asks glibc (``mallopt``) to serve every block from its heap —
no block gets pages of its own from mmap (``M_MMAP_MAX`` 0) — and never to trim the heap's
free top (``M_TRIM_THRESHOLD`` -1), so a step reuses the last step's memory and takes no
faults. (A second version trimmed above 1 GiB: base's forward pass on a batch of 32 x 128
frees more than that at once, and the next batch took 297,000 faults, 2.6 s against 2.2 s
on a 2-core EPYC, Zen 5.) (A first version
raised the mmap threshold instead, to its largest allowed value, 32 MiB; blocks above it
still came and went by mmap. Base's FFN activations for a batch of 32 x 128 tokens are
50 MB each: gelu_new of one took 37 ms, against 4.7 ms with the block kept, and the
batch's forward pass 4.8-5.2 s, against 4.1-4.3 s, on a 2-core Xeon, family 6 model 167;
separate processes, since a heap once grown serves both settings.) Peak memory does not
grow: the memory kept is what the last step used (the same peak RSS in that measurement).
The trainers and the Predictor call it; a loop of your own can too. It changes this
process's allocator for everything in it (PyTorch in the same process included), and does
nothing where glibc's mallopt is missing (macOS, musl)."""
import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed mmap threshold on 64-bit
_applied = None


def keep_freed_memory():
    """-> True if glibc now keeps freed blocks, of any size, for reuse."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _applied = bool(mallopt(M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and \
                bool(mallopt(M_TRIM_THRESHOLD, -1)) and bool(mallopt(M_MMAP_MAX, 0))
    return _applied
