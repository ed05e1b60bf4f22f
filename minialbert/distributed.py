"""Data parallelism over MPI: several processes ("ranks"), one global batch, one sum.

    mpiexec -n 2 minialbert pretrain --out runs/dp ...      # 2 ranks on this machine

Every rank builds the same tokenizer, data and initial weights from the same seed — no
data is sent. Each step's global batch is cut into ``micro_batches`` pieces; rank r of R
takes the r-th run of k/R consecutive pieces, computes their gradient (the loss of each
piece scaled by 1/k, as one process would), and one allreduce over a single flat float32
buffer sums the ranks' gradients. The sum of the pieces' gradients *is* the gradient of
the global batch (the loss is a mean over the pieces: chapter 15), so every rank takes
the same optimizer step and the weights stay equal — checked by a checksum.

``deterministic``: the allreduce's order of additions is the MPI library's own. With
``--deterministic`` each piece's gradient is kept apart, all of them are gathered on every
rank, and they are added in piece order 0, 1, …, k-1 — the order one process uses in the
same mode — so 1 rank and R ranks give the same bits (at R times the traffic).

Only rank 0 ("the root") prints, evaluates, logs and writes checkpoints. Work only the
root does is wrapped in ``on_root``, which hands its error (if any) to every rank, so all
stop together with the same message; any other error on one rank aborts the whole job
(``MPI_Abort``), so nothing waits forever for a rank that is gone.

Nothing here imports MPI unless the process was started by an MPI launcher (or
``--distributed`` is given); without mpi4py the single-process path is unchanged.
"""
import os
import sys
import time
import zlib

import numpy as np

# what the launchers set: MPICH's hydra (PMI_*), Open MPI (OMPI_COMM_WORLD_*), PMIx
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE")


class DistributedError(RuntimeError):
    pass


def launched_by_mpi():
    """True when an MPI launcher started this process as one of several ranks."""
    for v in LAUNCHER_SIZE_VARS:
        try:
            if int(os.environ.get(v, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


class Single:
    """One process: every collective is the identity. The loop is written once, for R ranks;
    with R = 1 it is the plain single-process loop."""

    rank, size, local_size, is_root = 0, 1, 1, True

    def allreduce_sum_(self, buf):
        return 0.0

    def allgather(self, obj):
        return [obj]

    def allgather_rows(self, mine):
        return mine

    def bcast(self, obj):
        return obj

    def any(self, flag):
        return bool(flag)

    def min(self, x):
        return x

    def barrier(self):
        pass

    def abort(self, code):
        sys.exit(code)


class World(Single):
    """MPI.COMM_WORLD through mpi4py: the few collectives training needs."""

    def __init__(self, comm, MPI):
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()  # ranks on this machine (they share its cores)
        node.Free()

    def allreduce_sum_(self, buf):
        """buf <- the sum of every rank's buf, in place. Returns the seconds it took."""
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return time.perf_counter() - t0

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def allgather_rows(self, mine):
        """[m, n] on each rank -> [R*m, n]: rank 0's rows, then rank 1's, …"""
        out = np.empty((self.size * mine.shape[0],) + mine.shape[1:], mine.dtype)
        self.comm.Allgather(mine, out)
        return out

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def any(self, flag):
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def min(self, x):
        return self.comm.allreduce(x, op=self.MPI.MIN)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


_WORLD = None


def world(distributed=None):
    """The process's world, made once: ``Single()`` unless started by an MPI launcher with
    more than one rank (``distributed=None``) or asked for (``True``)."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if distributed is False or (distributed is None and not launched_by_mpi()):
        return Single()
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError(
            "this process was started by an MPI launcher (or with --distributed), but mpi4py "
            "is not installed: pip install -e '.[mpi]' (mpi4py and the mpich wheel)") from None
    _WORLD = World(MPI.COMM_WORLD, MPI)
    return _WORLD


def current():
    """The world made so far (``Single()`` if none was)."""
    return _WORLD or Single()


def on_root(w, fn):
    """``fn()`` on the root only (the other ranks get None). Its error, if it raises,
    reaches every rank and is raised on each alike, marked ``all_ranks``, so all of them
    stop the same way and none waits for the others."""
    result = err = None
    if w.is_root:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed to every rank, raised there
            err = e
    if w.size > 1:
        err = w.bcast(err)
    if err is not None:
        err.all_ranks = True
        raise err
    return result


def my_pieces(w, k):
    """The micro-batch indices of this rank: a run of k/R consecutive ones."""
    if k % w.size:
        e = DistributedError(f"--micro-batches {k} must be a multiple of the number of "
                             f"ranks ({w.size}): each rank takes the same share")
        e.all_ranks = True  # every rank finds it alike: said once, by the root
        raise e
    m = k // w.size
    return range(w.rank * m, (w.rank + 1) * m)


def checksum(params):
    """A cheap fingerprint of the weights' bytes (CRC-32 over every array, in name order)."""
    c = 0
    for k in sorted(params):
        c = zlib.crc32(np.ascontiguousarray(params[k]).view(np.uint8), c)
    return c


def check_same(w, what, value):
    """Raise on every rank if the ranks' ``value``s differ (names the ranks that differ)."""
    if w.size == 1:
        return
    vals = w.allgather(value)
    odd = [r for r, v in enumerate(vals) if v != vals[0]]
    if odd:
        e = DistributedError(f"the ranks disagree on {what}: rank(s) {odd} differ from rank 0 "
                             "(different files, library versions or thread counts on the "
                             "machines?)")
        e.all_ranks = True
        raise e


class FlatGradients:
    """Every gradient as a view into one flat buffer (one allreduce per step), and, for the
    deterministic mode, ``rows`` more such buffers: one per micro-batch of this rank."""

    def __init__(self, params, rows=0):
        dtypes = {v.dtype for v in params.values()}
        if len(dtypes) != 1:
            raise ValueError(f"the parameters have several dtypes {dtypes}")
        self.names = list(params)
        self.shapes = [params[k].shape for k in self.names]
        self.n = sum(params[k].size for k in self.names)
        self.flat = np.zeros(self.n, dtypes.pop())
        self.views = self.views_of(self.flat)
        self.rows = np.zeros((rows, self.n), self.flat.dtype) if rows else None
        self.row_views = [self.views_of(r) for r in self.rows] if rows else []

    def views_of(self, buf):
        out, o = {}, 0
        for name, shape in zip(self.names, self.shapes):
            s = int(np.prod(shape))
            out[name] = buf[o:o + s].reshape(shape)
            o += s
        return out

    @property
    def nbytes(self):
        return self.flat.nbytes


def report_error(e, code):
    """Say what went wrong -> the exit status. Under MPI, an error every rank raised alike
    (``all_ranks``) is said once, by the root, and every rank exits with ``code``; an error
    of one rank alone aborts the job, naming the rank, so no other rank waits for it."""
    w = current()
    if w.size == 1:
        print(f"minialbert: error: {e}", file=sys.stderr)
        return code
    if getattr(e, "all_ranks", False):
        if w.is_root:
            print(f"minialbert: error: {e}", file=sys.stderr)
        return code
    print(f"minialbert: error on rank {w.rank} of {w.size}: {e}; stopping every rank",
          file=sys.stderr)
    w.abort(code)
