"""The GEMM micro-kernel: an MR x NR tile of C kept in vector registers.

Legend: kc the length of one block of the reduction, MR x NR the tile of C, W the floats in
one vector register (AVX-512: 16 float32, AVX2: 8, SSE: 4), NV = NR / W vectors per row.

What it computes (the readable twin, ``microkernel_loops``, is exactly this):

    for p in range(kc):                     # one rank-1 update per step of the reduction
        for i in range(MR):
            for j in range(NR):
                C[i, j] += Ap[p, i] * Bp[p, j]

Ap and Bp are *packed* panels (matmul.py makes them): for each p, the MR values of A's
column p and the NR values of B's row p lie next to each other in memory, so the kernel
reads both panels front to back, once.

Why an intrinsic. LLVM does not keep a 2-D accumulator array in registers when it comes from
plain loops (the array lives in memory, every update is a load and a store). So the fast
kernel is written one level down, in LLVM IR through llvmlite — still our code, one screen:
MR x NV accumulators of type <W x float>; per step p, NV vector loads of Bp's row, then for
each i one broadcast of Ap[p, i] and NV fused multiply-adds (``llvm.fma``). With MR*NV
accumulators + NV loaded vectors + 1 broadcast within the register file, nothing spills:

    ISA      registers  W (f32)  tile MR x NR   registers used
    AVX-512  32 x 512b  16       8 x 48 (NV 3)  24 + 3 + 1 = 28
                                 12 x 32 (NV 2) 24 + 2 + 1 = 27  (narrow: N = 64, 128, ...)
                                  8 x 32 (NV 2) 16 + 2 + 1 = 19  (short: 12 x 32's tail, the
                                                 last rows of its blocks: tail_start)
    AVX2     16 x 256b   8       6 x 16 (NV 2)  12 + 2 + 1 = 15
                                  4 x 16 (NV 2)   8 + 2 + 1 = 11  (the tail: a block's last
                                                 rows, where 6-row panels leave them ragged)
    SSE      16 x 128b   4       4 x  8 (NV 2)   8 + 2 + 1 = 11

(float64 halves W, so NR halves: 8 x 24 on AVX-512.) The tile is picked at run time from the
CPU's features (``host_isa``) and, on AVX-512, from the product's shape (``pick_kernel``:
the tile that wastes least on ragged edges). Every variant is compiled into the GEMM and
chosen by an argument, so one cached build serves every tile and a benchmark can time them
side by side.
A ragged tile (the last rows or columns of a product) runs the same kernel with masked
stores (``microkernel_edge``): the whole tile is computed, and only its first mr rows and
nr columns reach C.
Accumulators are allocas: LLVM's mem2reg pass turns them into registers. Before the loop,
each cache line of the C tile is prefetched for writing (``llvm.prefetch``, as BLIS's
kernels do): the tile is read and written once, after kc steps, and by then it is in L1
(measured on a 2-core Sapphire Rapids Xeon: 0.82-0.83x OpenBLAS with it, 0.78-0.81x
without, bench_matmul's geometric mean, two runs each).
"""
import os

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._base import aligned_empty_py

# kernel code -> (ISA, vector bytes, MR, NV)
KERNELS = {
    0: ("loops", 64, 4, 1),  # the readable twin: plain loops, tile 4 x 16 (f32)
    1: ("sse", 16, 4, 2),
    2: ("avx2", 32, 6, 2),
    3: ("avx512", 64, 8, 3),
    4: ("avx512", 64, 12, 2),  # narrow: 12 x 32, for N a multiple of 32 but not of 48
    5: ("avx512", 64, 8, 2),  # short: 8 x 32, for M a multiple of 8 but not of 12 (128)
}
ISA_CODES = {"loops": 0, "sse": 1, "avx2": 2, "avx512": 3}  # ISA -> its main (widest) kernel
# AVX2's tail tile, 4 x 16 (8 accumulators): the last rows of a block that 6-row panels
# would leave ragged (matmul.tail_start), not a tile pick_kernel chooses
TAIL_KERNEL = ("avx2", 32, 4, 2)


def _host_features():
    return {k for k, v in llvm_binding.get_host_cpu_features().items() if v}


def host_isa():
    """The widest vector ISA this CPU has ('avx512', 'avx2' or 'sse'); the environment
    variable MINIALBERT_GEMM_ISA picks a narrower one (to compare tiles on one machine).
    Under NUMBA_DISABLE_JIT=1 (to step through kernels in a debugger) the IR micro-kernel
    cannot run as Python, so the GEMM uses its plain-loop twin: 'loops'."""
    import numba
    if numba.config.DISABLE_JIT:
        return "loops"
    best = list(ISA_CODES)[_native_code()]
    want = os.environ.get("MINIALBERT_GEMM_ISA", best)
    if want not in ISA_CODES:
        raise ValueError(f"MINIALBERT_GEMM_ISA={want!r}: choose one of {sorted(ISA_CODES)}")
    if ISA_CODES[want] > ISA_CODES[best]:
        raise ValueError(f"MINIALBERT_GEMM_ISA={want!r}: this CPU has only {best}")
    return want


def _native_code():
    f = _host_features()
    return ISA_CODES["avx512" if "avx512f" in f else "avx2" if {"avx2", "fma"} <= f else "sse"]


# The main kernel code of the widest ISA this CPU has (MINIALBERT_GEMM_ISA aside): the GEMM
# compiles a copy of its loops for it alone (matmul._macrokernel). A constant to Numba, and
# Numba's cache is kept per CPU, so a cached kernel always has this CPU's value. (Under
# MINIALBERT_GEMM_ISA the kernels still give the same bits, through the other copy.)
NATIVE = _native_code()
# AVX-512's other two tiles (pick_kernel), with loops of their own too; on other CPUs, -1
NATIVE_NARROW, NATIVE_SHORT = (4, 5) if NATIVE == ISA_CODES["avx512"] else (-1, -1)
# Whether the GEMM asks for the next panel of B ahead when B streams from L3 or memory
# (matmul._prefetch_share). Measured on a 2-core Intel Xeon (family 6 model 167), base's
# frozen pass on one sentence of 128 tokens 1.09x with it; on a 2-core AMD EPYC (Zen 4),
# where the hardware prefetchers keep up, the same requests cost 5 % (RESULTS.md, the
# twenty-seventh session): not on AMD's cores (LLVM names them znver*). A constant to
# Numba, and Numba's cache is kept per CPU, as for NATIVE.
PREFETCH_B = not llvm_binding.get_host_cpu_name().startswith("znver")


def kernel_tile(dtype, code):
    """(MR, NR) of micro-kernel ``code`` for this dtype (float32 or float64)."""
    _, vbytes, mr, nv = KERNELS[code]
    return mr, nv * (vbytes // np.dtype(dtype).itemsize)


def tile(dtype, isa):
    """(MR, NR) of the ISA's main micro-kernel."""
    return kernel_tile(dtype, ISA_CODES[isa])


def kernels_up_to(isa):
    """The kernel codes a CPU with this ISA can run (every narrower ISA's too)."""
    order = list(ISA_CODES)
    return [c for c, k in KERNELS.items() if order.index(k[0]) <= order.index(isa)]


# AVX2's 6 x 16 tile leaves a block of 128 rows (one sentence, one head's queries) 21
# panels of 6 and a 22nd of 2 rows, computed whole and stored masked: 132 rows of work for
# 128 (one thread, K 256 x N 1024 on packed weights, AVX2 emulated on a Zen 4 EPYC: 120,
# 126, 128, 132 rows 628, 666, 690, 673 us). So the last rows of such a block go in panels
# of 4, run by a 4 x 16 tile (TAIL_KERNEL: 0.90-0.95 of the 6 x 16 tile's rate on
# L1-resident panels, there): 128 rows as 20 panels of 6 and two of 4.
# AVX-512's 12 x 32 tile likewise ends a block in panels of 8, run by its 8 x 32 tile
# (code 5, the same panels of B): 128 rows as 10 panels of 12 and one of 8. (On a 2-core
# Xeon, family 6 model 167, one thread, packed weights, K x N 256 x 1024, 256 x 768,
# 1024 x 256, 256 x 256: 12 x 32 on 120 rows ran at 166-176 GFLOP/s where 8 x 32 ran 128
# rows at 148-169, the median of 21 alternating rounds each.)
TAIL_MR = TAIL_KERNEL[2]
SHORT = 5  # AVX-512's 8 x 32 tile (KERNELS), the tail of its 12 x 32


@njit(inline="always")
def tail_mr(MR):
    # the height of a tail panel after panels of MR rows: AVX2's 4 after 6, AVX-512's 8
    # after 12; MR itself for every other tile (which has no tail)
    return TAIL_MR if MR == 6 else 8 if MR == 12 else MR


@njit(inline="always")
def tail_start(m, MR):
    # The first row of a block's tail of T-row panels (T = tail_mr(MR), 2/3 of MR); m:
    # none. Only on tiles of 6 rows (AVX2's) and 12 (AVX-512's 12 x 32). m = MR q + r:
    # r <= 2T - MR (1 or 2 for MR 6; 1 to 4 for 12), the last MR + r rows as two panels of
    # T (the second masked to fewer rows when MR + r < 2T); T - (MR - T) < r <= T, the
    # last r rows as one; r = 0 or r > T, none (the last panel of MR masked to r rows, as
    # before). Panel i's rows start at row i0, and it lies at i0 * kc in the packed block,
    # either height.
    if MR != 6 and MR != 12:
        return m
    T = TAIL_MR if MR == 6 else 8  # tail_mr(MR), written out: Python runs this as is
    r = m % MR
    if r == 0 or r > T:
        return m
    if r <= 2 * T - MR and m > MR:
        return m - r - MR
    return m - r


def tail_rows(m, MR):
    # the rows a block of m rows is computed as: its panels' heights summed (ragged panels
    # whole), what a tile choice costs (pick_kernel's count). Plain Python (py_func: no
    # compile on the way to a product's plan).
    t0 = getattr(tail_start, "py_func", tail_start)(m, MR)  # (NUMBA_DISABLE_JIT: as is)
    T = getattr(tail_mr, "py_func", tail_mr)(MR)
    return (t0 + MR - 1) // MR * MR + (m - t0 + T - 1) // T * T



def pick_kernel(dtype, isa, M, N):
    """(code, MR, NR): of this ISA's kernels, the one whose tiles cover an M x N product
    with the least padding (tiles x tile size / M N); the first in KERNELS on a tie
    (8 x 48, then 12 x 32, then 8 x 32). AVX-512's 8 x 48 tile covers N = 128 (the
    embedding size, and the QK^T of T = 128) as 144 columns, 12 % of its work wasted on
    ragged edges; 12 x 32 covers it exactly. And 12 x 32 covers M = 128 (one sentence of
    128 tokens, and each head's queries in attention) as 132 rows, 8 x 32 exactly: 16
    tiles, 8 a thread on two, where 12 x 32 gave one thread 72 rows and the other 56. On
    a 2-core EPYC, Zen 4, 8 x 32 ran those products 1.03-1.11x faster than 12 x 32 and
    was no slower on tiny's batch (4096 rows; the same bits, matmul.gemm(..., kernel=));
    a frozen pass of tiny on one sentence of 128 tokens 1.09x (benchmarks/ab_kernels.py
    55d6648 --only pass). Now a block of 12 x 32 tiles ends in 8-row panels where 12-row
    ones would be ragged (tail_start): 128 rows as 10 x 12 + 8, and as two blocks of 64
    (matmul.blocking), so rows count as their panels cover them (tail_rows) and 12 x 32,
    the faster tile, wins the tie."""
    best = None
    for code, k in KERNELS.items():
        if k[0] != isa:
            continue
        MR, NR = kernel_tile(dtype, code)
        padded = tail_rows(M, MR) * (-(-N // NR) * NR) / max(M * N, 1)
        if best is None or padded < best[0] - 1e-9:
            best = (padded, code, MR, NR)
    return best[1:]


_HAS_FMA = "fma" in _host_features()


# ----------------------------------------------------------------------------------
# the readable twin


# fastmath={"contract"} named here: without flags of its own, the twin compiled first as a
# callee of a kernel with FASTMATH (attention's) came out differently (a multiply-add fused
# or not, the last bit of a result) from the twin compiled first on its own, so two GEMM
# paths that must give the same bits (tests/test_matmul.py) did not, depending on the
# order the tests ran in. With its own flags it is one function whoever compiles it.
@njit(fastmath={"contract"}, cache=True)
def microkernel_loops(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, MR, NR, mr=-1, nr=-1):
    # C[c0 + i*ldc + j] (+)= sum_p Ap[a0 + p*MR + i] * Bp[b0 + p*NR + j]   (C flat)
    # for i < mr, j < nr (a ragged tile; -1: the whole tile)
    for i in range(MR if mr < 0 else mr):
        for j in range(NR if nr < 0 else nr):
            s = Ap.dtype.type(0)
            for p in range(kc):
                s += Ap[a0 + p * MR + i] * Bp[b0 + p * NR + j]
            if accumulate:
                C[c0 + i * ldc + j] += s
            else:
                C[c0 + i * ldc + j] = s


# ----------------------------------------------------------------------------------
# the fast kernel, one per ISA, written as LLVM IR


def _make_microkernel(vbytes, MR, NV, packs=False, edge=False):
    # packs=False: microkernel(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate), A packed.
    # packs=True: microkernel(kc, A, a0, rs, cs, Ap, a0p, Bp, ...): A read where it lies,
    # element (i, p) at A[a0 + i*rs + p*cs], and written packed to Ap[a0p + p*MR + i] on
    # the way — the first use of an A panel packs it (see matmul._macrokernel).
    # edge=True: the same with two more arguments, mr and nr, for a ragged tile: the whole
    # MR x NR tile is computed (the panels are zero past their edges), and only its first
    # mr rows and nr columns are stored, by masked vector stores.
    if edge and packs:
        @intrinsic
        def packing_edge(typingctx, kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc,
                         accumulate, mr, nr):
            sig = types.void(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate, mr,
                             nr)
            return sig, _codegen(vbytes, MR, NV, True, True)
        return packing_edge
    if edge:
        @intrinsic
        def microkernel_edge(typingctx, kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, mr, nr):
            sig = types.void(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, mr, nr)
            return sig, _codegen(vbytes, MR, NV, False, True)
        return microkernel_edge

    @intrinsic
    def microkernel(typingctx, kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate):
        # the same contract as microkernel_loops, with MR and NR = NV*W fixed
        sig = types.void(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate)
        return sig, _codegen(vbytes, MR, NV, False)

    @intrinsic
    def microkernel_packing(typingctx, kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc,
                            accumulate):
        sig = types.void(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate)
        return sig, _codegen(vbytes, MR, NV, True)

    return microkernel_packing if packs else microkernel


def _codegen(vbytes, MR, NV, packs, edge=False):
    def codegen(context, builder, signature, args):
        if packs:
            kc_, A_, a0_, rs_, cs_, Ap_, a0p_, Bp_, b0_, C_, c0_, ldc_, acc_ = args[:13]
            mr_, nr_ = args[13:] if edge else (None, None)
            b_arg, c_arg = 7, 9
        elif edge:
            kc_, Ap_, a0_, Bp_, b0_, C_, c0_, ldc_, acc_, mr_, nr_ = args
            b_arg, c_arg = 3, 5
        else:
            kc_, Ap_, a0_, Bp_, b0_, C_, c0_, ldc_, acc_ = args
            b_arg, c_arg = 3, 5
        fty = context.get_value_type(signature.args[1].dtype)  # float or double
        esize = 4 if fty == ir.FloatType() else 8  # bytes per element
        W = vbytes // esize
        NR = NV * W
        vty = ir.VectorType(fty, W)
        i64 = ir.IntType(64)

        def data(k, v):  # pointer to element 0 of a flat array argument
            return context.make_array(signature.args[k])(context, builder, v).data

        def c64(x):
            return ir.Constant(i64, x)

        b_ptr = builder.gep(data(b_arg, Bp_), [b0_])
        c_ptr = builder.gep(data(c_arg, C_), [c0_])
        if packs:  # row i of the source, and the packed panel written on the way
            src = builder.gep(data(1, A_), [a0_])
            a_rows = [builder.gep(src, [builder.mul(c64(i), rs_)]) for i in range(MR)]
            a_ptr = builder.gep(data(5, Ap_), [a0p_])
        else:
            a_ptr = builder.gep(data(1, Ap_), [a0_])
        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * W)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(NV)]
               for _ in range(MR)]
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]),
            f"llvm.fma.v{W}f{8 * esize}")
        undef = ir.Constant(vty, ir.Undefined)
        splat0 = ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W)
        # prefetch the tile of C (for writing) while the loop below runs (not a ragged
        # tile's: its lines past the edge may be another thread's)
        pf = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [
                ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(32),
                ir.IntType(32)]), "llvm.prefetch.p0")
        for i in range(0 if edge else MR):
            crow = builder.gep(c_ptr, [builder.mul(c64(i), ldc_)])
            for off in range(0, NR * esize, 64):  # each cache line of row i
                ptr = builder.bitcast(builder.gep(crow, [c64(off // esize)]),
                                      ir.IntType(8).as_pointer())
                builder.call(pf, [ptr, ir.Constant(ir.IntType(32), 1),
                                  ir.Constant(ir.IntType(32), 3),
                                  ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, kc_) as loop:  # for p in range(kc)
            p = loop.index
            brow = builder.gep(b_ptr, [builder.mul(p, c64(NR))])
            arow = builder.gep(a_ptr, [builder.mul(p, c64(MR))])
            b = [builder.load(builder.bitcast(builder.gep(brow, [c64(v * W)]),
                                              vty.as_pointer()), align=esize)
                 for v in range(NV)]  # Bp[p, v*W:(v+1)*W], unaligned loads
            for i in range(MR):
                if packs:  # A[i, p] from its row, and a copy into the packed panel
                    a = builder.load(builder.gep(a_rows[i], [builder.mul(p, cs_)]))
                    builder.store(a, builder.gep(arow, [c64(i)]))
                else:
                    a = builder.load(builder.gep(arow, [c64(i)]))  # Ap[p, i]
                a = builder.shuffle_vector(
                    builder.insert_element(undef, a, ir.Constant(ir.IntType(32), 0)),
                    undef, splat0)
                for v in range(NV):  # acc[i][v] += a * b[v]
                    old = builder.load(acc[i][v])
                    if _HAS_FMA:
                        new = builder.call(fma, [a, b[v], old])
                    else:
                        new = builder.fadd(builder.fmul(a, b[v]), old)
                    builder.store(new, acc[i][v])
        add = builder.icmp_unsigned("!=", acc_, ir.Constant(acc_.type, 0))
        _store_tile(builder, acc, c_ptr, ldc_, add, MR, NV, vty, esize, c64,
                    (mr_, nr_) if edge else None)
        return context.get_dummy_value()

    return codegen


def _store_tile(builder, acc, c_ptr, ldc_, add, MR, NV, vty, esize, c64, edge):
    # The tile out to C (row i at c_ptr + i*ldc), written, or added with add. edge: None,
    # or (mr, nr) for a ragged tile: rows i < mr only, and in each row the lanes of columns
    # j < nr (llvm.masked.load / llvm.masked.store, one mask per vector: its lanes' columns
    # v*W + lane against nr); nothing past the edge is read or written.
    W = vty.count
    i32, i64 = ir.IntType(32), ir.IntType(64)
    if edge is None:
        def load(ptr, v):
            return builder.load(ptr, align=esize)

        def store(val, ptr, v):
            builder.store(val, ptr, align=esize)
    else:
        mty = ir.VectorType(ir.IntType(1), W)
        suffix = f"v{W}f{8 * esize}.p0"
        mstore = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [vty, vty.as_pointer(), i32, mty]),
            f"llvm.masked.store.{suffix}")
        mload = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty.as_pointer(), i32, mty, vty]),
            f"llvm.masked.load.{suffix}")
        align = ir.Constant(i32, esize)
        zero = ir.Constant(vty, [ir.Constant(vty.element, 0.0)] * W)
        mr_, nr_ = (x if x.type.width == 64 else builder.sext(x, i64) for x in edge)
        lanes = ir.Constant(ir.VectorType(i64, W), list(range(W)))
        nr_v = builder.insert_element(ir.Constant(lanes.type, ir.Undefined), nr_,
                                      ir.Constant(i32, 0))
        nr_v = builder.shuffle_vector(nr_v, nr_v, ir.Constant(ir.VectorType(i32, W), [0] * W))
        masks = [builder.icmp_signed("<", builder.add(lanes, ir.Constant(
            lanes.type, [v * W] * W)), nr_v) for v in range(NV)]

        def load(ptr, v):
            return builder.call(mload, [ptr, align, masks[v], zero])

        def store(val, ptr, v):
            builder.call(mstore, [val, ptr, align, masks[v]])
    for i in range(MR):
        if edge is None:
            _store_row(builder, acc[i], c_ptr, ldc_, add, c64(i), NV, vty, c64, load, store)
        else:
            with builder.if_then(builder.icmp_signed("<", c64(i), mr_)):
                _store_row(builder, acc[i], c_ptr, ldc_, add, c64(i), NV, vty, c64, load,
                           store)


def _store_row(builder, acc_row, c_ptr, ldc_, add, i, NV, vty, c64, load, store):
    crow = builder.gep(c_ptr, [builder.mul(i, ldc_)])
    for v in range(NV):
        ptr = builder.bitcast(builder.gep(crow, [c64(v * vty.count)]), vty.as_pointer())
        val = builder.load(acc_row[v])
        with builder.if_else(add) as (then, otherwise):
            with then:
                store(builder.fadd(load(ptr, v), val), ptr, v)
            with otherwise:
                store(val, ptr, v)


microkernel_sse = _make_microkernel(*KERNELS[1][1:])
microkernel_avx2 = _make_microkernel(*KERNELS[2][1:])
microkernel_avx512 = _make_microkernel(*KERNELS[3][1:])
microkernel_avx512_narrow = _make_microkernel(*KERNELS[4][1:])
microkernel_avx512_short = _make_microkernel(*KERNELS[5][1:])
packing_sse = _make_microkernel(*KERNELS[1][1:], packs=True)
packing_avx2 = _make_microkernel(*KERNELS[2][1:], packs=True)
packing_avx512 = _make_microkernel(*KERNELS[3][1:], packs=True)
packing_avx512_narrow = _make_microkernel(*KERNELS[4][1:], packs=True)
packing_avx512_short = _make_microkernel(*KERNELS[5][1:], packs=True)
edge_sse = _make_microkernel(*KERNELS[1][1:], edge=True)
edge_avx2 = _make_microkernel(*KERNELS[2][1:], edge=True)
edge_avx512 = _make_microkernel(*KERNELS[3][1:], edge=True)
edge_avx512_narrow = _make_microkernel(*KERNELS[4][1:], edge=True)
edge_avx512_short = _make_microkernel(*KERNELS[5][1:], edge=True)
microkernel_tail = _make_microkernel(*TAIL_KERNEL[1:])
edge_tail = _make_microkernel(*TAIL_KERNEL[1:], edge=True)
packing_edge_sse = _make_microkernel(*KERNELS[1][1:], packs=True, edge=True)
packing_edge_avx2 = _make_microkernel(*KERNELS[2][1:], packs=True, edge=True)
packing_edge_avx512 = _make_microkernel(*KERNELS[3][1:], packs=True, edge=True)
packing_edge_avx512_narrow = _make_microkernel(*KERNELS[4][1:], packs=True, edge=True)
packing_edge_avx512_short = _make_microkernel(*KERNELS[5][1:], packs=True, edge=True)


@njit(inline="always")
def microkernel(isa, kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, MR, NR):
    """Dispatch on the kernel code (an argument: one compiled GEMM holds all tiles)."""
    if isa == 4:
        microkernel_avx512_narrow(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 5:
        microkernel_avx512_short(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 3:
        microkernel_avx512(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 2:
        microkernel_avx2(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 1:
        microkernel_sse(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate)
    else:
        microkernel_loops(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, MR, NR)


@njit(inline="always")
def microkernel_edge(isa, kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, MR, NR, mr, nr):
    """The micro-kernel on a ragged tile: only its first mr rows and nr columns reach C
    (the whole tile is computed: the packed panels are zero past their edges) — the bits
    of computing the tile elsewhere and copying those values into C."""
    if isa == 4:
        edge_avx512_narrow(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    elif isa == 5:
        edge_avx512_short(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    elif isa == 3:
        edge_avx512(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    elif isa == 2:
        edge_avx2(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    elif isa == 1:
        edge_sse(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    else:
        microkernel_loops(kc, Ap, a0, Bp, b0, C, c0, ldc, accumulate, MR, NR, mr, nr)


@njit(inline="always")
def microkernel_packing(isa, kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate, MR,
                        NR):
    """The micro-kernel on an A panel that is not packed yet: element (i, p) read at
    A[a0 + i*rs + p*cs] and written to Ap[a0p + p*MR + i] (packed, for the next uses) as
    the product runs — the same arithmetic, the same bits as packing first."""
    if isa == 4:
        packing_avx512_narrow(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 5:
        packing_avx512_short(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 3:
        packing_avx512(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 2:
        packing_avx2(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate)
    elif isa == 1:
        packing_sse(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate)
    else:  # the readable twin: pack, then the plain-loop kernel
        for p in range(kc):
            for i in range(MR):
                Ap[a0p + p * MR + i] = A[a0 + i * rs + p * cs]
        microkernel_loops(kc, Ap, a0p, Bp, b0, C, c0, ldc, accumulate, MR, NR)


@njit(inline="always")
def microkernel_packing_edge(isa, kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate,
                             MR, NR, mr, nr):
    """microkernel_packing on a ragged tile (the whole panel of A is packed; only its first
    mr rows and nr columns reach C, as in microkernel_edge)."""
    if isa == 4:
        packing_edge_avx512_narrow(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate,
                                   mr, nr)
    elif isa == 5:
        packing_edge_avx512_short(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate,
                                  mr, nr)
    elif isa == 3:
        packing_edge_avx512(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    elif isa == 2:
        packing_edge_avx2(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    elif isa == 1:
        packing_edge_sse(kc, A, a0, rs, cs, Ap, a0p, Bp, b0, C, c0, ldc, accumulate, mr, nr)
    else:
        for p in range(kc):
            for i in range(MR):
                Ap[a0p + p * MR + i] = A[a0 + i * rs + p * cs]
        microkernel_loops(kc, Ap, a0p, Bp, b0, C, c0, ldc, accumulate, MR, NR, mr, nr)


# ----------------------------------------------------------------------------------
# a prefetch, for the GEMM's packing


@intrinsic
def _prefetch_l2(typingctx, X, i):
    # llvm.prefetch(&X[i], read, locality 2, data): on x86 prefetcht1, the line into L2
    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(arr.data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        pf = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(pf, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(X, i), codegen


def prefetch_l2(X, i):
    """Ask for the cache line of X[i] (X flat and contiguous) to be brought into L2; it
    changes no value. A no-op when it runs as Python (NUMBA_DISABLE_JIT)."""


@overload(prefetch_l2, inline="always")
def _prefetch_l2_overload(X, i):
    return lambda X, i: _prefetch_l2(X, i)


# ----------------------------------------------------------------------------------
# an 8 x 8 transpose in registers, for the GEMM's transposing pack (the NT form's B)


def transpose_8x8(S, si, sj, D, di, dj):
    """D[di + k, dj + m] = S[si + m, sj + k] for k, m < 8: an 8 x 8 block of S, transposed,
    into D (both 2-D, rows of unit stride). What it computes; float32 runs the intrinsic
    below (three rounds of shuffles on eight <8 x float> rows), float64 these loops."""
    for k in range(8):
        for m in range(8):
            D[di + k, dj + m] = S[si + m, sj + k]


def _row_ptr(context, builder, aty, arr, i, j, fty):
    # pointer to element [i, j] of a 2-D array whose rows have unit stride
    a = context.make_array(aty)(context, builder, arr)
    s0 = cgutils.unpack_tuple(builder, a.strides, 2)[0]
    base = builder.ptrtoint(a.data, ir.IntType(64))
    esize = 4 if fty == ir.FloatType() else 8
    off = builder.add(builder.mul(i, s0), builder.mul(j, ir.Constant(ir.IntType(64), esize)))
    return builder.inttoptr(builder.add(base, off), fty.as_pointer()), s0


def _transpose_in_registers(builder, r):
    # r: eight <8 x float> rows r_0..r_7 -> eight columns, out_k = (r_0[k], ..., r_7[k])
    def shuf(a, b, mask):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8),
                                                        mask))

    # 1: pairs of rows interleaved within each 128-bit half (unpcklps / unpckhps)
    lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
    t = []
    for m in range(0, 8, 2):
        t += [shuf(r[m], r[m + 1], lo), shuf(r[m], r[m + 1], hi)]
    # 2: pairs of pairs (shufps): u holds columns (0|4), (1|5), (2|6), (3|7) of four
    # rows, for rows 0-3 and rows 4-7
    lo2, hi2 = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
    u = []
    for g in (0, 4):
        u += [shuf(t[g], t[g + 2], lo2), shuf(t[g], t[g + 2], hi2),
              shuf(t[g + 1], t[g + 3], lo2), shuf(t[g + 1], t[g + 3], hi2)]
    # 3: the 128-bit halves of rows 0-3 and 4-7 together (vperm2f128)
    first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
    return ([shuf(u[k], u[k + 4], first) for k in range(4)] +
            [shuf(u[k], u[k + 4], second) for k in range(4)])


@intrinsic
def _transpose_8x8_f32(typingctx, S, si, sj, D, di, dj):
    # r_m = S[si + m, sj:sj+8]; out_k = (r_0[k], ..., r_7[k]) -> D[di + k, dj:dj+8]
    def codegen(context, builder, signature, args):
        S_, si_, sj_, D_, di_, dj_ = args
        f32 = ir.FloatType()
        vty = ir.VectorType(f32, 8)
        i64 = ir.IntType(64)
        src, s0 = _row_ptr(context, builder, signature.args[0], S_, si_, sj_, f32)
        dst, d0 = _row_ptr(context, builder, signature.args[3], D_, di_, dj_, f32)

        def row(base, stride, m):  # <8 x float>* to row m of a block
            addr = builder.add(builder.ptrtoint(base, i64), builder.mul(ir.Constant(i64, m),
                                                                        stride))
            return builder.inttoptr(addr, vty.as_pointer())

        r = [builder.load(row(src, s0, m), align=4) for m in range(8)]
        for k, out in enumerate(_transpose_in_registers(builder, r)):
            builder.store(out, row(dst, d0, k), align=4)
        return context.get_dummy_value()

    return types.void(S, si, sj, D, di, dj), codegen


def pack_8_steps(S, s0, srs, rows, D, d0, MR):
    """Eight steps of an A panel, packed: D[d0 + k*MR + i] = S[s0 + i*srs + k] for
    i < rows (at most MR, MR at most 8), k < 8 (S and D flat). What it computes; float32
    runs the intrinsic below: `rows` vector loads (zeros for the rows past them), the
    transpose's 24 shuffles, and eight 8-wide stores, at D[d0 + k*MR] for k = 0, 1, ...
    in that order. Each store also writes the 8 - MR values after its MR, which the next
    one overwrites; the last one's land on D[d0 + 8*MR:d0 + 7*MR + 8], which the caller
    writes afterwards, or owns. (The micro-kernel that packs A on the way stores a value
    at a time, six a step beside its twelve FMAs: on a Zen 3 EPYC that call took 2x the
    time of one on a packed panel.)"""
    for k in range(8):
        for i in range(rows):
            D[d0 + k * MR + i] = S[s0 + i * srs + k]


@intrinsic
def _pack_8_steps_f32(typingctx, S, s0, srs, rows, D, d0, MR):
    def codegen(context, builder, signature, args):
        S_, s0_, srs_, rows_, D_, d0_, MR_ = args
        f32 = ir.FloatType()
        vty = ir.VectorType(f32, 8)
        src = builder.gep(context.make_array(signature.args[0])(context, builder, S_).data,
                          [s0_])
        dst = builder.gep(context.make_array(signature.args[4])(context, builder, D_).data,
                          [d0_])
        zero = ir.Constant(vty, [ir.Constant(f32, 0.0)] * 8)
        r = []
        for m in range(8):  # row m, or zeros past `rows` (nothing is read there)
            slot = cgutils.alloca_once_value(builder, zero)
            with builder.if_then(builder.icmp_signed("<", ir.Constant(rows_.type, m), rows_)):
                p = builder.gep(src, [builder.mul(ir.Constant(srs_.type, m), srs_)])
                builder.store(builder.load(builder.bitcast(p, vty.as_pointer()), align=4),
                              slot)
            r.append(builder.load(slot))
        for k, out in enumerate(_transpose_in_registers(builder, r)):  # in order of k
            p = builder.gep(dst, [builder.mul(ir.Constant(MR_.type, k), MR_)])
            builder.store(out, builder.bitcast(p, vty.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(S, s0, srs, rows, D, d0, MR), codegen


@overload(pack_8_steps, inline="always")
def _pack_8_steps_overload(S, s0, srs, rows, D, d0, MR):
    if S.dtype == types.float32 and D.dtype == types.float32:
        return lambda S, s0, srs, rows, D, d0, MR: _pack_8_steps_f32(S, s0, srs, rows, D,
                                                                     d0, MR)
    return pack_8_steps  # float64: the loops above


@overload(transpose_8x8, inline="always")
def _transpose_8x8_overload(S, si, sj, D, di, dj):
    if S.dtype == types.float32 and D.dtype == types.float32:
        return lambda S, si, sj, D, di, dj: _transpose_8x8_f32(S, si, sj, D, di, dj)
    return transpose_8x8  # float64: the loops above, compiled as they are


@njit(parallel=True, cache=True)
def _peak_loop(isa, Ap, Bp, C, kc, MR, NR, reps):
    n = C.shape[0]
    for t in prange(n):  # one copy of the panels per thread, all in L1
        for r in range(reps):
            microkernel(isa, kc, Ap[t], 0, Bp[t], 0, C[t], 0, NR, True, MR, NR)


def measured_peak_gflops(dtype, isa, threads, seconds=0.3, repeats=10):
    """FLOP/s of the micro-kernel alone on L1-resident panels, on every thread: the most
    arithmetic this CPU delivers to our code (it stands in for cores x FMA units x lanes x
    2 x clock, whose clock under load a program cannot read reliably). The best of
    ``repeats`` short runs, after a run of ``seconds`` that is not counted: on a 2-core
    EPYC (Zen 5) the first 0.2 s after a pause ran at 0.65 of the rest (the cores' clock,
    or the threads', coming up), and a benchmark that measured the peak first printed
    that; on a 2-core EPYC (Zen 3) single runs of 0.1 s gave 103-171 GFLOP/s on two
    threads, so the best of many short ones is taken."""
    _peak_once(dtype, isa, threads, seconds)  # the warm-up
    return max(_peak_once(dtype, isa, threads, seconds / repeats) for _ in range(repeats))


def _peak_once(dtype, isa, threads, seconds):
    import time

    MR, NR = tile(dtype, isa)
    kc = 128
    Ap = np.ones((threads, kc * MR), dtype)
    # B's panels on a cache line, as the GEMM's are (aligned_empty; a row is kc * NR values,
    # a whole number of lines): 16 bytes past one, every AVX-512 load of B touches two lines
    Bp = aligned_empty_py(threads * kc * NR, np.dtype(dtype)).reshape(threads, kc * NR)
    Bp[:] = 1
    # each thread's tile of C on cache lines of its own (a row of MR*NR values plus 256
    # bytes): two threads writing the two halves of one line would pass it between the
    # cores after every call
    C = np.zeros((threads, MR * NR + 256 // np.dtype(dtype).itemsize), dtype)
    code = ISA_CODES[isa]
    _peak_loop(code, Ap, Bp, C, kc, MR, NR, 1)
    reps = 1000
    while True:
        t0 = time.perf_counter()
        _peak_loop(code, Ap, Bp, C, kc, MR, NR, reps)
        dt = time.perf_counter() - t0
        if dt > seconds:
            return 2.0 * kc * MR * NR * reps * threads / dt / 1e9
        reps *= 4
