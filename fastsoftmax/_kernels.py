"""Numba kernels of fastsoftmax: contiguous arrays in, arrays out; no validation, no allocation policy.

Design
------
* Rows are independent. Every row pass copies (or computes) one row of logits into the output row and
  then works in place on it: max, ``exp(z - max)`` with its float64 sum, then the probabilities, the
  log-probabilities or the gradient. One read of the input, one write of the output, no N x K temporary.
* Parallel kernels run ``prange`` over fixed blocks of rows (``ROW_BLOCK``); iteration ``i`` writes only
  its own rows and its own slot of any partial buffer. Block boundaries depend on the problem size only,
  never on the thread count, so results are bitwise identical with 1 or 2 threads.
* Each parallel kernel is a pair (``@_parallel_kernel``: a ``KernelPair`` of _parallel.py) of the
  ``prange`` kernel and its serial twin, compiled from one function; ``pair(n_tasks, *args)`` runs
  the serial twin for a single task, in forked children of an OpenMP process and in workqueue threads
  that find the pool busy. Determinism rule: the body of a ``prange`` iteration is one call to a
  block function (``_softmax_block_rows``, ...), not inlined, called by both twins: its loops are
  vectorized and contracted once, when it is compiled, and the twins differ only in how blocks are
  handed out (each twin's module re-optimizes its linked copy, which left the floating-point code
  unchanged; tests/test_kernel_pairs.py checks the bits). Inlined into each twin, the same loops
  came out differently: float64 row sums 1-2 ulp apart from 32 classes up (docs/design.md,
  "Threading and determinism").
* Reductions over samples never use a shared accumulator inside ``prange``: per-row losses go to an
  (N,) float64 array (summed afterwards in a fixed order), db and dW go to per-block / per-chunk partial
  buffers merged in chunk order by the caller.
* Precision: row sums of exponentials, losses and db are float64 whatever the data dtype; logits,
  probabilities, gradients and the dot products of the small-K path stay in the data dtype (as BLAS).
* ``exp`` and ``log`` are vectorizable polynomials (``_exp_nonpos``, ``_log_pos``, 1 ulp) in
  flag-free arithmetic (``_fma``, ``_add``, ...), left for LLVM to inline into the callers' loops:
  this llvmlite has no SVML, and libm's scalar ``exp`` made the row pass 3.3x slower. Row sums of
  exponentials are strict too (``_row_sum``: eight lanes in a fixed order), so that re-optimizing a
  block function in another module cannot change its bits; the max uses ``llvm.maxnum`` because LLVM
  does not vectorize a compare-and-select max without ``nnan``, which we never allow (inputs hold
  -inf on purpose). Up to FLAT_K_MAX classes the exps run over a block's rows as one flat array
  (the gradient block transposes the block instead, so that every step runs across rows, and is
  compiled without fast-math flags, see ``_xent_grad_block_flat``): each row kernel comes in both
  variants (``_softmax_rows_flat``, ...), kernels of their own picked by the functional layer by
  K, so that a call compiles only the one it runs.
* A row whose sum of exponentials is not >= 1 (NaN: a NaN entry, or an all -inf row) or whose max is
  +inf is bad (``_row_is_bad``); kernels count such rows and the functional layer turns a non-zero
  count into a ValueError.
* The small-K linear kernel (``_linear_xent_small``) skips BLAS: it reads each block of 4 rows of X
  once and uses it, while in L1, for both ``X W^T`` and ``G^T X``.
* Above SMALL_K_MAX classes (``_linear_xent_tiled``, ``_linear_softmax_tiled``,
  ``_linear_hvp_tiled``) tiles of rows go through GEMMs called from the kernels, single-threaded,
  inside one parallel region (see the section "The BLAS path").
* The Hessian-vector product (``_linear_hvp_small``, ``_linear_hvp_tiled``) follows the same two
  paths with a second logit array ``T = X S^T`` for the direction S, held beside Z as one array
  ``[Z | T] = X [W; S]^T``: row r = p * (t - p.t) overwrites T in place, then ``HS = R^T X`` goes
  to per-chunk partials (small K) or slots or blocks (large K).
"""


import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import config, njit, prange, types
from numba.core import cgutils
from numba.extending import (
    get_cython_function_address,
    intrinsic,
    models,
    overload,
    register_model,
)

from fastsoftmax import _cache
from fastsoftmax._parallel import parallel_kernel

# Everything but nnan/ninf: -inf logits (masked classes) are legitimate input.
FASTMATH = {"reassoc", "contract", "nsz", "arcp", "afn"}
# The exp polynomial must keep its evaluation order: no reassoc.
FASTMATH_EXP = {"contract", "nsz", "arcp", "afn"}

ROW_BLOCK = 64  # rows per prange iteration of the row kernels
LABEL_BLOCK = 2**16  # labels per prange iteration of `_copy_labels`
# Software prefetch of the rows ahead in the row-by-row passes (`_prefetch_distance`): about
# PREFETCH_BYTES ahead, at most PREFETCH_MAX_ROWS rows, and none for rows longer than
# PREFETCH_MAX_ROW_BYTES (there a row is a long stream the hardware prefetcher follows, and whole
# rows prefetched ahead crowded L2: 32000 classes 1.44x -> 1.55x the copy floor). Measured
# (cross_entropy_grad, interleaved processes, 2 threads): 100000 x 100 float64 1.76x -> 1.54x the
# copy floor, 20000 x 1000 float32 1.55x -> 1.27x, float64 1.44x -> 1.28x; one row ahead beat two
# at 4 and 8 KB rows, four rows matched two at 400-800 B rows.
PREFETCH_BYTES = 4096
PREFETCH_MAX_ROWS = 4
PREFETCH_MAX_ROW_BYTES = 8192
FLAT_K_MAX = 32  # up to this many classes the cross-entropy blocks take exps over the whole block
# Rows of at most this many bytes are transposed into the gradient block's scratch straight from
# the given logits; longer ones are copied to the output first and transposed from there, in L1
# (interleaved processes, cross_entropy_grad, x the copy floor, copied first -> straight: 10
# classes 7.7 -> 6.8 float32 and 3.9 -> 3.2 float64, 16 float32 6.25 -> 5.80; but 16 float64
# 3.59 -> 3.84 and 32 float64 2.84 -> 3.19).
FLAT_DIRECT_ROW_BYTES = 80
SMALL_K_GROUP = 4  # rows of X processed together by the small-K kernels (divides ROW_BLOCK)


def _jit(parallel=False, fastmath=FASTMATH, inline=False, leaf=False):
    """The one place numba options are set.

    inline=True is for per-row helpers: Numba increfs array arguments at every call boundary (two
    atomic NRT calls per array per call, which LLVM's inliner cannot remove); inlining in Numba's IR
    removes the boundary. leaf=True is for scalar functions (exp) left for LLVM to inline into the
    caller's loops, which then vectorize: `_never_inlined_by_callers` is for block functions only
    (marked noinline, exp was a scalar call per element and the row passes 4x slower). Compiled
    code is cached on disk by `_cache.RecompilingCache` (Numba's
    cache, but a corrupted cache file means a recompilation instead of an error on every call).
    """
    jit = njit(
        nogil=True, cache=False, error_model="numpy", fastmath=fastmath, parallel=parallel,
        inline="always" if inline else "never",
    )

    def decorate(py_func):
        dispatcher = jit(py_func)
        if not config.DISABLE_JIT:  # under NUMBA_DISABLE_JIT, jit returns py_func itself
            _cache.enable(dispatcher)
            if not inline and not parallel and not leaf:
                _never_inlined_by_callers(dispatcher)
        return dispatcher

    return decorate


def _never_inlined_by_callers(dispatcher):
    """Mark every compiled version of a block function ``noinline`` in the LLVM module its callers
    link, so that each caller runs the block's code as compiled, whatever the process compiled or
    loaded from the cache.

    Numba links a callee's optimized IR into each caller (``linkonce_odr``) and optimizes the caller
    again, inlining the callee where LLVM's heuristics like. In one process, the calls then resolve
    to whichever definition of the callee was loaded first: the callee's own (compiled fresh in
    this process) or a caller's copy (loaded from the cache), inlined and re-optimized in the
    caller's context. With ``reassoc`` those two differ in the last bits, and the twins of a pair,
    one compiled here and one loaded from the cache, disagreed (float64 dW at 40 classes, 2.8e-17;
    tests/test_kernel_pairs.py::test_twins_agree_whatever_the_cache_holds). Not inlined, every copy is
    the same optimized function. Uses Numba internals (the code library's modules), as `_cache`."""
    add_overload = dispatcher.add_overload

    def add_overload_noinline(cres):
        library = cres.library
        for module in (getattr(library, "_final_module", None),
                       getattr(library, "_shared_module", None)):
            for fn in module.functions if module is not None else ():
                attributes = " ".join(str(a) for a in fn.attributes)
                if not fn.is_declaration and "inline" not in attributes:
                    fn.add_function_attribute("noinline")
        return add_overload(cres)

    dispatcher.add_overload = add_overload_noinline


# Every parallel kernel is declared with this decorator: it compiles the kernel with
# `_jit(parallel=True)` and its serial twin with `_jit()`, as one `KernelPair` (see _parallel.py).
_parallel_kernel = parallel_kernel(_jit)


def n_blocks(n, size):
    """How many blocks of `size` items cover `n` items (ceil(n / size)): the one block count of the
    kernels and of the callers that size their per-block buffers (plain Python for those)."""
    return (n + size - 1) // size


_n_blocks = _jit(inline=True)(n_blocks)


# ------------------------------------------------------------------------------------------------
# Scalar building blocks
# ------------------------------------------------------------------------------------------------


@intrinsic
def _maxnum(typingctx, a, b):
    """llvm.maxnum: a max the loop vectorizer turns into vmaxpd (NaN operands are ignored)."""
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _bits_to_float(typingctx, bits):
    """Reinterpret an int64 as float64 or an int32 as float32 (to build 2**n in exp)."""
    out = types.float64 if bits.bitwidth == 64 else types.float32
    sig = out(bits)

    def codegen(context, builder, signature, args):
        llty = ir.DoubleType() if bits.bitwidth == 64 else ir.FloatType()
        return builder.bitcast(args[0], llty)

    return sig, codegen


def _vector_fma(builder, a, x, c):
    """llvm.fma on LLVM vectors: a * x + c rounded once per lane. Numba's fast-math pass flags
    only calls that return a scalar float, so a call on vectors keeps no flags."""
    ty = a.type
    name = f"llvm.fma.v{ty.count}{'f32' if ty.element == ir.FloatType() else 'f64'}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
    return builder.call(fn, [a, x, c])


@intrinsic
def _fma(typingctx, a, b, c):
    """llvm.fma: a * b + c rounded once, with no fast-math flags (never reassociated or split,
    even inlined into a function compiled with reassoc); vectorizes to vfmadd.

    Numba's fast-math pass gives its function's flags to every call that returns a scalar float,
    whatever flags the call has: a scalar llvm.fma inlined into a `FASTMATH` block carried
    reassoc and contract, and LLVM reassociated the sums built from it. The call is therefore
    made on one-element vectors (`_vector_fma`), which the pass does not touch; LLVM turns it
    back into the scalar intrinsic, without flags, before vectorizing."""
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        zero = ir.Constant(ir.IntType(32), 0)
        undef = ir.Constant(ir.VectorType(args[0].type, 1), ir.Undefined)
        vec = [builder.insert_element(undef, x, zero) for x in args]
        return builder.extract_element(_vector_fma(builder, *vec), zero)

    return sig, codegen


# A flag that changes nothing for fadd, fsub and fmul, so that Numba's fast-math pass adds none
# (`_strict_binary`).
_STRICT = ("afn",)


def _strict_binary(op, doc, flags=_STRICT):
    """An intrinsic `f(a, b)` emitting the IR instruction `op` with the fast-math flags `flags`.

    Numba's fast-math pass gives the flags of the function an instruction is lowered into
    (`fastmath=`) to every floating-point instruction that has none, so a flagless instruction
    here would carry its caller's reassoc and contract. Hence one flag that changes nothing:
    `afn` (approximate functions) has no meaning for `fadd`, `fsub` and `fmul`. `_div` is given
    `nsz` (the sign of a zero only) so that it keeps no `arcp` (see `_div`)."""

    def typer(typingctx, a, b):
        def codegen(context, builder, signature, args):
            return getattr(builder, op)(args[0], args[1], flags=flags)

        return a(a, b), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_add = _strict_binary("fadd", "a + b (see `_row_sum`).")
_sub = _strict_binary("fsub", "a - b.")
# With the caller's arcp, LLVM's code generator turned two divisions by the same K in one basic
# block into multiplications by 1 / K, and whether they shared a block differed between a block
# function compiled in the process and its copy re-optimized inside a cached caller: float64
# gradients with label smoothing 1 ulp apart between a cold and a warm cache
# (tests/test_determinism.py).
_div = _strict_binary("fdiv", "a / b, correctly rounded (never a * (1 / b)).", flags=("nsz",))
_mul = _strict_binary(
    "fmul", "a * b: (p * 2**n1) * 2**n2 must not become p * (2**n1 * 2**n2), which rounds "
    "twice in the subnormal range.")


# ------------------------------------------------------------------------------------------------
# Eight float64 lanes in one vector register, for the strict row sums (`_row_sum_n`, `_row_dot`):
# written as eight scalar accumulators, the lanes stayed eight scalar adds (the SLP vectorizer does
# not vectorize such loop-carried sums), and converting and adding each entry alone was a large
# part of a row pass. The lanes are an LLVM <8 x double> value: one (converting) vector load and
# one vector add per eight entries, in exactly the order of the eight scalar lanes.


class _LanesType(types.Type):
    """Eight float64 lanes (an LLVM <8 x double>)."""

    def __init__(self):
        super().__init__(name="Lanes8")


_lanes8 = _LanesType()
_LANES_IR = ir.VectorType(ir.DoubleType(), 8)


@register_model(_LanesType)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _LANES_IR)


def _element_ptr(context, builder, arrty, ary, row, col):
    """(Byte pointer to ary[row, col], the column stride in bytes) for the 2-D array ary of numba
    type arrty; row and col are non-negative (a narrower integer is zero-extended). The column
    stride is the item size, a constant, for a C-contiguous array."""
    arr = context.make_array(arrty)(context, builder, ary)
    strides = cgutils.unpack_tuple(builder, arr.strides, 2)
    i64 = strides[0].type
    row, col = (builder.zext(a, i64) if a.type.width < i64.width else a for a in (row, col))
    step = ir.Constant(i64, arrty.dtype.bitwidth // 8) if arrty.layout == "C" else strides[1]
    byte = ir.IntType(8).as_pointer()
    offset = builder.add(builder.mul(row, strides[0]), builder.mul(col, step))
    return builder.gep(builder.bitcast(arr.data, byte), [offset]), step


def _row_vector(context, builder, arrty, ary, i, u, n):
    """The n entries ary[i, u:u + n] (u unsigned) as an LLVM vector of the array's dtype: one
    vector load from a C-contiguous array, n loads by the strides otherwise."""
    elty = context.get_data_type(arrty.dtype)
    vty = ir.VectorType(elty, n)
    ptr, step = _element_ptr(context, builder, arrty, ary, i, u)
    if arrty.layout == "C":
        return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=arrty.dtype.bitwidth // 8)
    vec = ir.Constant(vty, ir.Undefined)
    for j in range(n):
        pj = builder.gep(ptr, [builder.mul(ir.Constant(step.type, j), step)])
        vec = builder.insert_element(vec, builder.load(builder.bitcast(pj, elty.as_pointer())),
                                     ir.Constant(ir.IntType(32), j))
    return vec


def _row_lanes(context, builder, arrty, ary, i, u):
    """The eight entries ary[i, u:u + 8] (u unsigned) as <8 x double> (`_row_vector`, converted
    from float32 in one vector conversion)."""
    vec = _row_vector(context, builder, arrty, ary, i, u, 8)
    return vec if vec.type.element == ir.DoubleType() else builder.fpext(vec, _LANES_IR)


@intrinsic
def _lanes_zero(typingctx):
    """Eight lanes of 0.0."""
    return _lanes8(), lambda context, builder, sig, args: ir.Constant(_LANES_IR, [0.0] * 8)


def _check_row_args(A, i, u):
    if not (isinstance(A, types.Array) and A.ndim == 2 and isinstance(A.dtype, types.Float)
            and isinstance(i, types.Integer) and u == types.uint64):
        raise TypeError("lanes of a 2-D float array row, at an unsigned column")


@intrinsic
def _lanes_add(typingctx, acc, A, i, u):
    """acc + A[i, u:u + 8] in float64, lane by lane (one strict vector add)."""
    _check_row_args(A, i, u)

    def codegen(context, builder, sig, args):
        vec = _row_lanes(context, builder, sig.args[1], args[1], args[2], args[3])
        return builder.fadd(args[0], vec, flags=_STRICT)

    return _lanes8(acc, A, i, u), codegen


@intrinsic
def _lanes_add_mul(typingctx, acc, A, i, u, B, j, v):
    """acc + A[i, u:u + 8] * B[j, v:v + 8] in float64, lane by lane: each product rounded, then
    added (strict vector multiply and add, never an FMA)."""
    _check_row_args(A, i, u)
    _check_row_args(B, j, v)

    def codegen(context, builder, sig, args):
        a = _row_lanes(context, builder, sig.args[1], args[1], args[2], args[3])
        b = _row_lanes(context, builder, sig.args[4], args[4], args[5], args[6])
        return builder.fadd(args[0], builder.fmul(a, b, flags=_STRICT), flags=_STRICT)

    return _lanes8(acc, A, i, u, B, j, v), codegen


@intrinsic
def _lanes_total(typingctx, acc):
    """((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)) of the eight lanes."""

    def codegen(context, builder, sig, args):
        lane = [builder.extract_element(args[0], ir.Constant(ir.IntType(32), j)) for j in range(8)]

        def add(a, b):
            return builder.fadd(a, b, flags=_STRICT)

        return add(add(add(lane[0], lane[1]), add(lane[2], lane[3])),
                   add(add(lane[4], lane[5]), add(lane[6], lane[7])))

    return types.float64(acc), codegen


# ------------------------------------------------------------------------------------------------
# Sixteen lanes of the data dtype for a row's max (`_row_max`). Written as a scalar maxnum loop,
# LLVM vectorized the loop but reduced its vector one lane at a time (a chain of 16 dependent
# maxss with NaN selects) and took the K mod 16 remainder as a scalar loop: at 100 classes,
# float32, a third of the gradient row pass. The max does not depend on the order in which it is
# taken (maxnum ignores NaN; a tie of -0.0 and +0.0 may give either, which no result depends on
# beyond the sign of an exactly zero log-probability), so the lanes reduce as a tree and the last
# sixteen entries of the row cover the remainder, overlapping entries already taken.

MAX_LANES = 16


def _vector_maxnum(builder, a, b):
    """llvm.maxnum lane by lane on two LLVM vectors."""
    ty = a.type
    name = f"llvm.maxnum.v{ty.count}{'f32' if ty.element == ir.FloatType() else 'f64'}"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty]), name)
    return builder.call(fn, [a, b])


@intrinsic
def _row_max_lanes(typingctx, A, i, K):
    """The max of A[i, :K] for K >= MAX_LANES (unsigned), one loop in IR: lanes of MAX_LANES
    entries (maxnum lane by lane), the last MAX_LANES entries of the row for the remainder, then
    a tree over the lanes (halves, then quarters, ...). The loop is built here rather than in
    Python over intrinsics on (A, i, u): that way Numba kept reference-count updates of A in
    every row (two NRT calls a row)."""
    _check_row_args(A, i, K)

    def codegen(context, builder, sig, args):
        arrty, (ary, row, n) = sig.args[0], args
        u64 = n.type
        width = ir.Constant(u64, MAX_LANES)
        acc = cgutils.alloca_once_value(
            builder, _row_vector(context, builder, arrty, ary, row, ir.Constant(u64, 0), MAX_LANES))
        # k = MAX_LANES, 2 MAX_LANES, ... while k + MAX_LANES <= n; then k = n - MAX_LANES
        full = builder.mul(builder.udiv(n, width), width)
        with cgutils.for_range_slice(builder, width, full, width, inc=True) as (k, _):
            vec = _row_vector(context, builder, arrty, ary, row, k, MAX_LANES)
            builder.store(_vector_maxnum(builder, builder.load(acc), vec), acc)
        vec = _row_vector(context, builder, arrty, ary, row, builder.sub(n, width), MAX_LANES)
        vec = _vector_maxnum(builder, builder.load(acc), vec)
        i32, m = ir.IntType(32), MAX_LANES
        while m > 1:
            m //= 2
            lo = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, m), list(range(m))))
            hi = builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, m),
                                                              list(range(m, 2 * m))))
            vec = _vector_maxnum(builder, lo, hi)
        return builder.extract_element(vec, ir.Constant(i32, 0))

    return A.dtype(A, i, K), codegen


def _row_prefetch(rw):
    """An intrinsic f(A, i): llvm.prefetch of every 64-byte line of row i of the 2-D C-contiguous
    A (a loop in IR, so that no reference count of A is taken per row), for writing (rw = 1) or
    reading (rw = 0). A hint: it never faults and changes no result."""

    def typer(typingctx, A, i):
        def codegen(context, builder, sig, args):
            arrty = sig.args[0]
            ary = context.make_array(arrty)(context, builder, args[0])
            i64 = ir.IntType(64)
            row = args[1] if args[1].type.width == 64 else builder.zext(args[1], i64)
            stride = builder.extract_value(ary.strides, 0)
            nbytes = builder.mul(builder.extract_value(ary.shape, 1),
                                 ir.Constant(i64, arrty.dtype.bitwidth // 8))
            i8p = ir.IntType(8).as_pointer()
            base = builder.gep(builder.bitcast(ary.data, i8p), [builder.mul(row, stride)])
            i32 = ir.IntType(32)
            fn = builder.module.declare_intrinsic(
                "llvm.prefetch", [i8p], ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]))
            with cgutils.for_range_slice(builder, ir.Constant(i64, 0), nbytes,
                                         ir.Constant(i64, 64), inc=True) as (off, _):
                builder.call(fn, [builder.gep(base, [off]), ir.Constant(i32, rw),
                                  ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return context.get_dummy_value()

        return types.void(A, i), codegen

    return intrinsic(typer)


_prefetch_row_read = _row_prefetch(0)
_prefetch_row_write = _row_prefetch(1)


if config.DISABLE_JIT:

    def _prefetch_row_read(A, i):  # noqa: F811
        pass

    def _prefetch_row_write(A, i):  # noqa: F811
        pass


@intrinsic
def _float_to_bits(typingctx, x):
    """Reinterpret a float64 as int64 (the inverse of `_bits_to_float`, for log)."""
    sig = types.int64(x)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


def _exp_nonpos(x):
    """exp(x) for x <= 0 (including -inf), vectorizable; dispatched on dtype below."""
    raise NotImplementedError  # only callable from jitted code


@_jit(fastmath=FASTMATH_EXP, leaf=True)
def _exp_nonpos_f64(x):
    # exp(x) = 2**n * exp(r), n = round(x / ln2), |r| <= ln2/2; Taylor to degree 13 (< 0.1 ulp
    # truncation). 2**n is built from two bit-cast factors so subnormal results round correctly.
    # Inlined by LLVM into the callers' loops, and re-optimized in every module that links them:
    # the arithmetic goes through `_fma` and `_mul`, whose instructions carry no fast-math flags,
    # so no optimization can change its bits.
    x = -1080.0 if x < -1080.0 else x
    n = np.floor(_fma(x, 1.4426950408889634, 0.5))
    r = _fma(-n, 1.90821492927058770002e-10, _fma(-n, 6.93147180369123816490e-01, x))
    p = 1.6059043836821613e-10
    p = _fma(p, r, 2.08767569878681e-09)
    p = _fma(p, r, 2.505210838544172e-08)
    p = _fma(p, r, 2.755731922398589e-07)
    p = _fma(p, r, 2.7557319223985893e-06)
    p = _fma(p, r, 2.48015873015873e-05)
    p = _fma(p, r, 1.984126984126984e-04)
    p = _fma(p, r, 1.388888888888889e-03)
    p = _fma(p, r, 8.333333333333333e-03)
    p = _fma(p, r, 4.1666666666666664e-02)
    p = _fma(p, r, 0.16666666666666666)
    p = _fma(p, r, 0.5)
    p = _fma(p, r, 1.0)
    p = _fma(p, r, 1.0)
    ni = np.int64(n)
    n1 = ni >> 1
    return _mul(_mul(p, _bits_to_float((n1 + 1023) << 52)),
                _bits_to_float((ni - n1 + 1023) << 52))


@_jit(fastmath=FASTMATH_EXP, leaf=True)
def _exp_nonpos_f32(x):
    # The float32 twin: degree-7 Taylor on |r| <= ln2/2 (< 0.1 ulp truncation).
    x = np.float32(-110.0) if x < np.float32(-110.0) else x
    n = np.floor(_fma(x, np.float32(1.4426950408889634), np.float32(0.5)))  # stays float32
    r = _fma(-n, np.float32(-2.12194440e-4), _fma(-n, np.float32(0.693359375), x))
    p = np.float32(1.9841270e-4)
    p = _fma(p, r, np.float32(1.3888889e-3))
    p = _fma(p, r, np.float32(8.3333333e-3))
    p = _fma(p, r, np.float32(4.1666667e-2))
    p = _fma(p, r, np.float32(0.16666667))
    p = _fma(p, r, np.float32(0.5))
    p = _fma(p, r, np.float32(1.0))
    p = _fma(p, r, np.float32(1.0))
    # n is in [-159, 0]: an int32 conversion (AVX2 converts 8 float32 to int32 at once, not to
    # int64). Numba promotes int32 arithmetic to int64: cast back so the bit pattern is a
    # float32's (LLVM then keeps the arithmetic in int32 lanes).
    ni = np.int32(n)
    n1 = ni >> 1
    f1 = _bits_to_float(np.int32((n1 + 127) << 23))
    f2 = _bits_to_float(np.int32((ni - n1 + 127) << 23))
    return _mul(_mul(p, f1), f2)


@overload(_exp_nonpos, jit_options={"fastmath": FASTMATH_EXP})
def _exp_nonpos_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        return lambda x: _exp_nonpos_f32(x)
    return lambda x: _exp_nonpos_f64(x)


def _log_pos(x):
    """log(x) for float64 x (any value: 0 gives -inf, negative or NaN gives NaN), vectorizable;
    < 1 ulp (fdlibm's e_log.c algorithm). Float32 callers pass float64(x) and round the result
    once (< 0.5 ulp + 2**-29 in float32)."""
    raise NotImplementedError  # only callable from jitted code


@_jit(fastmath=FASTMATH_EXP, leaf=True)
def _log_pos_f64(x):
    # x = 2**k * m, m in [sqrt(2)/2, sqrt(2)); log m = 2 atanh(f / (2 + f)), f = m - 1, as fdlibm:
    # log x = k ln2_hi - ((hfsq - (s (hfsq + R) + k ln2_lo)) - f). Subnormals are first scaled by
    # 2**54. Strict arithmetic throughout (`_add`, ...): inlined and re-optimized anywhere, the same
    # bits; branch-free, so loops over rows vectorize.
    tiny = x < 2.2250738585072014e-308
    xs = _mul(x, 18014398509481984.0) if tiny else x  # 2**54
    bits = _float_to_bits(xs)
    k = ((bits >> 52) & 0x7FF) - 1023 - (54 if tiny else 0)
    mbits = (bits & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000  # m in [1, 2)
    big = mbits > 0x3FF6A09E667F3BCC  # m > sqrt(2): halve it
    m = _bits_to_float(mbits - (0x0010000000000000 if big else 0))
    dk = np.float64(k + (1 if big else 0))
    f = _sub(m, 1.0)
    sf = _div(f, _add(2.0, f))
    z = _mul(sf, sf)
    w = _mul(z, z)
    t1 = _mul(w, _fma(w, _fma(w, 1.531383769920937332e-01, 2.222219843214978396e-01),
                      3.999999999940941908e-01))
    t2 = _mul(z, _fma(w, _fma(w, _fma(w, 1.479819860511658591e-01, 1.818357216161805012e-01),
                              2.857142874366239149e-01), 6.666666666666735130e-01))
    r = _add(t2, t1)
    hfsq = _mul(_mul(0.5, f), f)
    inner = _add(_mul(sf, _add(hfsq, r)), _mul(dk, 1.90821492927058770002e-10))
    y = _sub(_mul(dk, 6.93147180369123816490e-01), _sub(_sub(hfsq, inner), f))
    if x > 0.0 and x < np.inf:
        return y
    return -np.inf if x == 0.0 else (x if x == np.inf else np.nan)


@overload(_log_pos, jit_options={"fastmath": FASTMATH_EXP})
def _log_pos_overload(x):
    return lambda x: _log_pos_f64(np.float64(x))


if config.DISABLE_JIT:
    # NUMBA_DISABLE_JIT=1 (pdb, coverage) runs every kernel as Python; intrinsics and overloads
    # exist only in compiled code, so these stand in for them (same arithmetic, slowly).

    def _maxnum(a, b):  # noqa: F811
        return a if b != b or a >= b else b

    def _bits_to_float(bits):  # noqa: F811
        return bits.view(np.float64 if bits.dtype.itemsize == 8 else np.float32)

    def _fma(a, b, c):  # noqa: F811 (rounds twice: NUMBA_DISABLE_JIT is for debugging, not bits)
        return a * b + c

    def _mul(a, b):  # noqa: F811
        return a * b

    def _add(a, b):  # noqa: F811
        return a + b

    def _sub(a, b):  # noqa: F811
        return a - b

    def _div(a, b):  # noqa: F811
        return a / b if b != 0 else np.float64(a) / np.float64(b)

    def _float_to_bits(x):  # noqa: F811
        return np.float64(x).view(np.int64)

    def _log_pos(x):  # noqa: F811
        with np.errstate(all="ignore"):
            return np.log(np.float64(x))  # the polynomial's bits are only in compiled code

    def _exp_nonpos(x):  # noqa: F811
        if x != x:  # the compiled polynomial propagates NaN; int(NaN) raises in Python
            return x
        return _exp_nonpos_f32(x) if isinstance(x, np.float32) else _exp_nonpos_f64(x)

    def _lanes_zero():  # noqa: F811
        return np.zeros(8)

    def _lanes_add(acc, A, i, u):  # noqa: F811
        return acc + A[i, u:u + 8].astype(np.float64)

    def _lanes_add_mul(acc, A, i, u, B, j, v):  # noqa: F811
        return acc + A[i, u:u + 8].astype(np.float64) * B[j, v:v + 8].astype(np.float64)

    def _lanes_total(acc):  # noqa: F811
        return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))

    def _row_max_lanes(A, i, K):  # noqa: F811
        return np.fmax.reduce(A[i, :K])


# ------------------------------------------------------------------------------------------------
# Row helpers: all work in place on row i of the output A (C-contiguous, 2-D). They index (A, i)
# instead of taking a row view A[i]: a view per row costs two atomic NRT reference-count updates on
# the array's shared counter (about 90 ns a row, and cache-line ping-pong between threads).
# ------------------------------------------------------------------------------------------------


@_jit(inline=True)
def _row_load(A, i, Z, zi, b, copy):
    """A[i] := Z[zi] (+ b). `b` has size 0 when there is no bias."""
    K = A.shape[1]
    if copy:
        for k in range(K):
            A[i, k] = Z[zi, k]
    if b.shape[0] > 0:
        for k in range(K):
            A[i, k] += b[k]


@_jit(inline=True)
def _prefetch_distance(A):
    """How many rows ahead the row passes over A prefetch (0: none), see PREFETCH_BYTES."""
    row_bytes = max(A.shape[1] * A.itemsize, 1)
    if row_bytes > PREFETCH_MAX_ROW_BYTES:
        return 0
    return min(PREFETCH_MAX_ROWS, max(1, PREFETCH_BYTES // row_bytes))


@_jit(inline=True)
def _row_max(A, i):
    """The max of row i (maxnum: NaN entries skipped, NaN only for an all-NaN row)."""
    return _row_max_n(A, i, A.shape[1])


@_jit(inline=True)
def _row_max_n(A, i, K):
    """`_row_max` of A[i, :K]: from MAX_LANES columns on in vector lanes (`_row_max_lanes`)."""
    if K < MAX_LANES:
        m = A[i, 0]
        for k in range(K):
            m = _maxnum(m, A[i, k])
        return m
    return _row_max_lanes(A, i, np.uint64(K))


@_jit(inline=True)
def _row_sum(A, i):
    """float64 sum of row i in a fixed order: eight strided partial sums (lane j adds the entries
    k = j mod 8 of the first 8 * (K // 8)), combined pairwise, then the rest in order.

    Strict additions (`_add`, no reassoc): a reassociated sum is vectorized as the optimizer sees
    fit, and Numba re-optimizes each block function in every module that links it, so a kernel
    loaded from the cache and its twin compiled in the process summed the same exponentials in
    different orders (float64 softmax 1 ulp apart from 40 classes up; tests/test_kernel_pairs.py).
    The lanes are one vector register (`_lanes_add`)."""
    return _row_sum_n(A, i, 0, A.shape[1])


@_jit(inline=True)
def _row_sum_n(A, i, lo, n):
    """`_row_sum` of A[i, lo:lo + n]: float64, eight strict lanes (`_lanes_add`), the same order.
    Unsigned column indices: Numba's wraparound of a possibly negative signed index costs a
    compare and select per load."""
    acc = _lanes_zero()
    for k in range(lo, lo + n - 7, 8):
        acc = _lanes_add(acc, A, i, np.uint64(k))
    s = _lanes_total(acc)
    for k in range(lo + n - n % 8, lo + n):
        s = _add(s, np.float64(A[i, np.uint64(k)]))
    return s


@_jit(inline=True)
def _row_dot(A, i, lo_a, B, j, lo_b, n):
    """float64 sum over k < n of A[i, lo_a + k] * B[j, lo_b + k], in the order of `_row_sum` and
    as strictly (products rounded, then added: with contraction, an FMA here in one module and
    not in another would change the last bits between a cached twin and one compiled in the
    process). Unsigned indices as in `_row_sum_n`."""
    acc = _lanes_zero()
    d = np.uint64(lo_b - lo_a)
    for k in range(lo_a, lo_a + n - 7, 8):
        u = np.uint64(k)
        acc = _lanes_add_mul(acc, A, i, u, B, j, u + d)
    s = _lanes_total(acc)
    for k in range(lo_a + n - n % 8, lo_a + n):
        u = np.uint64(k)
        s = _add(s, _mul(np.float64(A[i, u]), np.float64(B[j, u + d])))
    return s


@_jit(inline=True)
def _row_exp_inplace(A, i, m):
    """A[i] := exp(A[i] - m); returns the float64 sum (`_row_sum`)."""
    for k in range(A.shape[1]):
        A[i, k] = _exp_nonpos(A[i, k] - m)
    return _row_sum(A, i)


@_jit(inline=True)
def _row_exp_from(A, i, Z, zi, m):
    """A[i] := exp(Z[zi] - m); returns the float64 sum (`_row_sum`): `_row_exp_inplace` on a
    copy of Z[zi], without the copy."""
    for k in range(A.shape[1]):
        A[i, k] = _exp_nonpos(Z[zi, k] - m)
    return _row_sum(A, i)


@_jit(inline=True)
def _row_sum_exp(A, i, m, E):
    """float64 sum of exp(A[i] - m), A unchanged, in the order of `_row_sum`: the exps go into
    row 0 of the scratch E (1, K or more) of A's dtype, then `_row_sum_n` sums them. Summed as
    they were made, eight exps a pass into eight strict lanes, the exps did not vectorize
    (log-softmax and cross-entropy 1.2-2.3x as long at 100 and 300 classes)."""
    K = A.shape[1]
    for k in range(K):
        E[0, k] = _exp_nonpos(A[i, k] - m)
    return _row_sum_n(E, 0, 0, K)


@_jit(inline=True)
def _row_is_bad(m, s):
    """NaN or +inf somewhere in the row, or every entry -inf, from the row's max m and its sum s
    of exp(z - m). The max skips NaN (maxnum) and is +inf when an entry is; a NaN entry, and
    every entry of an all -inf row (-inf - -inf), make a NaN z - m, whose exp is NaN
    (`_exp_nonpos` propagates it), and so is s. A good row has s >= 1: its max gives exp(0) = 1.
    (A separate float64 sum of z - m made the NaN test until the sum alone was seen to make it:
    that pass was a sixth of the gradient row pass at 100 classes.)"""
    return not (s >= 1.0) or m == np.inf


@_jit(inline=True)
def _row_mean_shifted(A, i, m):
    """float64 mean of A[i] - m, for the smoothing term mean_k(-log p_k) = log s - mean(A[i] - m).
    The raw mean(A[i]) - m cancels catastrophically for large |m| (float64 logits of 1e30 gave a
    loss of -7.6e21) and the raw sum overflows near the float64 limit."""
    u = 0.0
    for k in range(A.shape[1]):
        u += np.float64(A[i, k]) - np.float64(m)
    return u / A.shape[1]


# Not inlined in Numba IR and without contract/reassoc: inlined, the parallel kernels and their
# serial twins contracted (1 - smoothing) * nll + smoothing * smooth into different FMAs, and forked
# children or workqueue-contended calls got losses 1 ulp away from the parent's
# (tests/test_reliability.py).
@_jit(fastmath={"nsz", "arcp", "afn"})
def _xent_from_log(log_s, m, mean_shifted, zy, smoothing):
    """Cross-entropy of one row from the log of its sum of exps, its max m, mean of (row - m) and
    label logit zy, with label smoothing `smoothing` in [0, 1]."""
    nll = log_s - (np.float64(zy) - np.float64(m))
    if smoothing == 0.0:
        return nll
    smooth = log_s - mean_shifted
    if smoothing == 1.0:
        return smooth
    return (1.0 - smoothing) * nll + smoothing * smooth


@_jit(inline=True)
def _xent_from_stats(m, mean_shifted, s, zy, smoothing):
    """`_xent_from_log` from the sum of exps s itself."""
    return _xent_from_log(_log_pos(s), m, mean_shifted, zy, smoothing)


@_jit(inline=True)
def _row_grad_stats(A, i, Z, zi, b, copy, yi, weight, smoothing, scale):
    """A[i] := gradient of weight * scale * cross-entropy of logits Z[zi] (+ b) with label yi;
    returns what the loss needs, (s, m, zy, mean shifted), and whether the row is bad."""
    _row_load(A, i, Z, zi, b, copy)
    m = _row_max(A, i)
    zy = A[i, yi]
    ms = _row_mean_shifted(A, i, m) if smoothing != 0.0 else 0.0
    s = _row_exp_inplace(A, i, m)
    bad = _row_is_bad(m, s)
    _row_scale_grad(A, i, yi, s, weight, smoothing, scale)
    return s, m, zy, ms, bad


@_jit(inline=True)
def _row_grad_stats_from(A, i, Z, zi, yi, weight, smoothing, scale):
    """`_row_grad_stats` without a bias, with Z[zi] read where its copy in A[i] would be: the
    max, label logit and mean from Z, the exps written into A[i] (`_row_exp_from`). One pass
    over the row less than copying first, and the same values."""
    m = _row_max(Z, zi)
    zy = Z[zi, yi]
    ms = _row_mean_shifted(Z, zi, m) if smoothing != 0.0 else 0.0
    s = _row_exp_from(A, i, Z, zi, m)
    bad = _row_is_bad(m, s)
    _row_scale_grad(A, i, yi, s, weight, smoothing, scale)
    return s, m, zy, ms, bad


@_jit(inline=True)
def _row_scale_grad(A, i, yi, s, weight, smoothing, scale):
    """A[i] := (exps A[i] / their sum s - smoothed one-hot of yi) * weight * scale."""
    K = A.shape[1]
    # (p - target) * weight, written so that p == target gives exactly 0 (K = 1, a certain row).
    inv = A.dtype.type(1.0 / s)
    # Divisions through `_div`: under arcp, smoothing / K became smoothing * (1 / K) in some
    # modules only, and ey / s could become ey * inv.
    u_64 = _div(smoothing, np.float64(K))
    u = A.dtype.type(u_64)
    ws = A.dtype.type(weight * scale)
    ey = A[i, yi]
    for k in range(K):
        A[i, k] = (A[i, k] * inv - u) * ws
    # The label's entry p_y - (1 - smoothing) cancels when p_y is near 1: take it in float64, from
    # the float64 sum s (in float32, p_y - 1 = -3.4e-4 came out 4e-5 off).
    A[i, yi] = A.dtype.type((_div(np.float64(ey), s) - u_64 - (1.0 - smoothing)) * (weight * scale))


@_jit(inline=True)
def _row_grad(A, i, Z, zi, b, copy, yi, weight, smoothing, scale):
    """A[i] := gradient of weight * scale * cross-entropy of logits Z[zi] (+ b) with label yi;
    returns (weight * loss, bad)."""
    s, m, zy, ms, bad = _row_grad_stats(A, i, Z, zi, b, copy, yi, weight, smoothing, scale)
    loss = 0.0 if weight == 0.0 else weight * _xent_from_stats(m, ms, s, zy, smoothing)
    return loss, bad


# ------------------------------------------------------------------------------------------------
# Row kernels on given logits
#
# Argument notes, as in scikit-learn's _loss.pyx.tp: IN is only read, OUT only written, INOUT both.
# Shapes use N rows (samples) and K columns (classes); "data dtype" is float32 or float64, the same
# for every array so marked. Optional arrays are passed with size 0 when absent (one compiled
# specialization instead of one per combination of None arguments).
# ------------------------------------------------------------------------------------------------


@_parallel_kernel
def _softmax_rows(Z, out, b, copy):
    """out := softmax(Z + b) row by row; returns the number of bad rows. For more than FLAT_K_MAX
    classes: `_softmax_rows_flat` below, `_log_softmax_rows` and `_log_softmax_rows_flat` for the
    log-softmax. Either variant computes any K (functional picks by K, as the single kernel that
    held both did); all four are kernels of their own so that a call compiles only the one it
    runs (cold compilation is most of a short job's time).

    Z    IN    (N, K) data dtype, C-contiguous: logits; read only when `copy` (else out holds them)
    out  INOUT (N, K) data dtype, C-contiguous: the result; the logits on entry when not `copy`
    b    IN    (K,) data dtype: bias added to every row; size 0: no bias
    copy IN    bool: start from Z (False: work in place on out)
    """
    N = out.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _softmax_block_rows(Z, out, b, copy, lo, min(N, lo + ROW_BLOCK))
    return bad


@_parallel_kernel
def _softmax_rows_flat(Z, out, b, copy):
    """`_softmax_rows` up to FLAT_K_MAX classes (`_softmax_block_flat`); the same arguments."""
    N = out.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _softmax_block_flat(Z, out, b, copy, lo, min(N, lo + ROW_BLOCK))
    return bad


@_parallel_kernel
def _log_softmax_rows(Z, out, b, copy):
    """out := log-softmax(Z + b) row by row, for more than FLAT_K_MAX classes; as `_softmax_rows`."""
    N = out.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _log_softmax_block_rows(Z, out, b, copy, lo, min(N, lo + ROW_BLOCK))
    return bad


@_parallel_kernel
def _log_softmax_rows_flat(Z, out, b, copy):
    """`_log_softmax_rows` up to FLAT_K_MAX classes (`_log_softmax_block_flat`)."""
    N = out.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _log_softmax_block_flat(Z, out, b, copy, lo, min(N, lo + ROW_BLOCK))
    return bad


@_jit()
def _softmax_block_rows(Z, out, b, copy, lo, hi):
    """Rows lo..hi of `_softmax_rows` (one prange iteration, shared by both twins), row by row.

    Branches on flags (copy; b given) stay in the block functions, around leaf helpers: inside an
    inlined row helper they made Numba keep reference-count updates of `out` in the row loop
    (1.5x slower at 7 classes).

    Short rows go to the flat block (for callers of any width): past that test, LLVM knows that
    K > FLAT_K_MAX and leaves out the row loops' short-trip-count paths (without it, softmax at
    20000 x 100 float64 took 1.06x as long)."""
    if out.shape[1] <= FLAT_K_MAX:
        return _softmax_block_flat(Z, out, b, copy, lo, hi)
    bad = 0
    ahead = _prefetch_distance(out)
    if copy and b.shape[0] == 0:  # read from Z, no copy (see `_xent_grad_block`)
        for i in range(lo, hi):
            if ahead > 0 and i + ahead < out.shape[0]:
                _prefetch_row_read(Z, i + ahead)
                _prefetch_row_write(out, i + ahead)
            m = _row_max(Z, i)
            s = _row_exp_from(out, i, Z, i, m)
            _row_scale_inplace(out, i, out.dtype.type(1.0 / s))
            bad += 1 if _row_is_bad(m, s) else 0
        return bad
    for i in range(lo, hi):
        if ahead > 0 and i + ahead < out.shape[0]:
            if copy:
                _prefetch_row_read(Z, i + ahead)
            _prefetch_row_write(out, i + ahead)
        _row_load(out, i, Z, i, b, copy)
        m = _row_max(out, i)
        s = _row_exp_inplace(out, i, m)
        _row_scale_inplace(out, i, out.dtype.type(1.0 / s))
        bad += 1 if _row_is_bad(m, s) else 0
    return bad


@_jit()
def _log_softmax_block_rows(Z, out, b, copy, lo, hi):
    """Rows lo..hi of `_log_softmax_rows`, row by row: (z - max) - log s in this order. Short rows
    go to the flat block (see `_softmax_block_rows`)."""
    if out.shape[1] <= FLAT_K_MAX:
        return _log_softmax_block_flat(Z, out, b, copy, lo, hi)
    bad = 0
    E = np.empty((1, out.shape[1]), dtype=out.dtype)
    ahead = _prefetch_distance(out)
    for i in range(lo, hi):
        if ahead > 0 and i + ahead < out.shape[0]:
            if copy:
                _prefetch_row_read(Z, i + ahead)
            _prefetch_row_write(out, i + ahead)
        _row_load(out, i, Z, i, b, copy)
        m = _row_max(out, i)
        s = _row_sum_exp(out, i, m, E)
        _row_sub_inplace(out, i, m, out.dtype.type(_log_pos(s)))
        bad += 1 if _row_is_bad(m, s) else 0
    return bad


@_jit(inline=True)
def _shift_rows(Z, out, b, copy, lo, hi, stats):
    """out[i] := Z[i] (+ b) - its max for rows lo..hi; stats[0, r] := the max of row lo + r."""
    for r in range(hi - lo):
        i = lo + r
        _row_load(out, i, Z, i, b, copy)
        m = _row_max(out, i)
        stats[0, r] = m
        for k in range(out.shape[1]):
            out[i, k] = out[i, k] - m


@_jit()
def _softmax_block_flat(Z, out, b, copy, lo, hi):
    """Rows lo..hi of `_softmax_rows_flat`: exps in one flat loop over the block (see
    `_flat_grad_rows`), the same values as row by row."""
    K = out.shape[1]
    stats = np.empty((1, hi - lo))
    _shift_rows(Z, out, b, copy, lo, hi, stats)
    flat = out.reshape(out.shape[0] * K)
    for j in range(np.uint64(lo * K), np.uint64(hi * K)):
        flat[j] = _exp_nonpos(flat[j])
    bad = 0
    for r in range(hi - lo):
        s = _row_sum(out, lo + r)
        bad += 1 if _row_is_bad(stats[0, r], s) else 0
        _row_scale_inplace(out, lo + r, out.dtype.type(1.0 / s))
    return bad


@_jit()
def _log_softmax_block_flat(Z, out, b, copy, lo, hi):
    """Rows lo..hi of `_log_softmax_rows_flat`: out holds the rows minus their max, their exps go
    to a block-sized scratch array in one flat loop, the logs of the sums run across rows;
    out[i] - log s rounds as `_row_sub_inplace` does (out[i] is already x - m, rounded)."""
    n, K = hi - lo, out.shape[1]
    stats = np.empty((2, n))
    _shift_rows(Z, out, b, copy, lo, hi, stats)
    e = np.empty((n, K), out.dtype)
    ef = e.reshape(n * K)
    flat = out.reshape(out.shape[0] * K)
    for j in range(np.uint64(n * K)):
        ef[j] = _exp_nonpos(flat[j + np.uint64(lo * K)])
    bad = _log_sums(e, stats)
    for r in range(n):
        c = out.dtype.type(stats[1, r])
        for k in range(K):
            out[lo + r, k] = out[lo + r, k] - c
    return bad


@_jit(inline=True)
def _log_sums(e, stats):
    """stats[1, r] := log of the sum of e[r] (rows of exps, summed as `_row_sum`), the logs in one
    loop across rows; stats[0, r] holds row r's max. Returns the number of bad rows."""
    bad = 0
    for r in range(e.shape[0]):
        s = _row_sum(e, r)
        bad += 1 if _row_is_bad(stats[0, r], s) else 0
        stats[1, r] = s
    for r in range(e.shape[0]):
        stats[1, r] = _log_pos(stats[1, r])
    return bad


@_jit(inline=True)
def _row_scale_inplace(A, i, c):
    """A[i] *= c."""
    for k in range(A.shape[1]):
        A[i, k] *= c


@_jit(inline=True)
def _row_sub_inplace(A, i, m, c):
    """A[i] := (A[i] - m) - c, in this order (strict `_sub`): folding m + c first, rounded to the
    data dtype, loses c when |m| >> c (log_softmax of a float32 row of equal logits 1e4 was off by
    4e-4; of a float64 row of equal logits 1e30, by log K). Through `_sub` the loop vectorizes: a
    function of its own compiled without reassoc, called per entry, made log-softmax at 100
    classes twice as long as softmax."""
    for k in range(A.shape[1]):
        A[i, k] = _sub(_sub(A[i, k], m), c)


@_parallel_kernel
def _xent_rows(Z, y, sample_weight, smoothing, losses):
    """losses[i] := sample_weight[i] * cross-entropy of row i; returns the number of bad rows.

    Z             IN  (N, K) data dtype, C-contiguous: logits
    y             IN  (N,) intp: labels in [0, K)
    sample_weight IN  (N,) float64; size 0: all ones
    smoothing     IN  float in [0, 1]: label smoothing
    losses        OUT (N,) float64: weighted per-sample losses
    """
    N = Z.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _xent_block(Z, y, sample_weight, smoothing, losses, lo, min(N, lo + ROW_BLOCK))
    return bad


@_parallel_kernel
def _xent_rows_flat(Z, y, sample_weight, smoothing, losses):
    """`_xent_rows` up to FLAT_K_MAX classes (`_xent_block_flat`); the same arguments."""
    N = Z.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _xent_block_flat(Z, y, sample_weight, smoothing, losses, lo,
                                min(N, lo + ROW_BLOCK))
    return bad


@_jit()
def _xent_block(Z, y, sample_weight, smoothing, losses, lo, hi):
    """Rows lo..hi of `_xent_rows` (one prange iteration, shared by both twins), row by row; short
    rows go to the flat block (see `_softmax_block_rows`)."""
    if Z.shape[1] <= FLAT_K_MAX:
        return _xent_block_flat(Z, y, sample_weight, smoothing, losses, lo, hi)
    bad = 0
    E = np.empty((1, Z.shape[1]), dtype=Z.dtype)
    ahead = _prefetch_distance(Z)
    for i in range(lo, hi):
        if ahead > 0 and i + ahead < Z.shape[0]:
            _prefetch_row_read(Z, i + ahead)
        m = _row_max(Z, i)
        s = _row_sum_exp(Z, i, m, E)
        wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
        ms = _row_mean_shifted(Z, i, m) if smoothing != 0.0 and wi != 0.0 else 0.0
        losses[i] = 0.0 if wi == 0.0 else wi * _xent_from_stats(m, ms, s, Z[i, y[i]], smoothing)
        bad += 1 if _row_is_bad(m, s) else 0
    return bad


@_jit()
def _xent_block_flat(Z, y, sample_weight, smoothing, losses, lo, hi):
    """Rows lo..hi of `_xent_rows_flat`, as `_xent_grad_block_flat`: the rows minus their max in
    a block-sized scratch array, their exps in one flat loop, sums in the order of `_row_sum`
    (the same bits as `_row_sum_exp`), then the logs across rows and the losses."""
    n, K = hi - lo, Z.shape[1]
    shifted = np.empty((n, K), Z.dtype)
    stats = np.empty((2, n))  # row max; the log-sum-exp
    for r in range(n):
        m = _row_max(Z, lo + r)
        stats[0, r] = m
        for k in range(K):
            shifted[r, k] = Z[lo + r, k] - m  # in the data dtype, as `_row_exp_inplace`
    e = shifted.reshape(n * K)
    for j in range(np.uint64(n * K)):
        e[j] = _exp_nonpos(e[j])
    bad = _log_sums(shifted, stats)
    for r in range(n):
        i, m = lo + r, stats[0, r]
        wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
        ms = _row_mean_shifted(Z, i, m) if smoothing != 0.0 and wi != 0.0 else 0.0
        losses[i] = 0.0 if wi == 0.0 else wi * _xent_from_log(stats[1, r], m, ms, Z[i, y[i]],
                                                               smoothing)
    return bad


@_jit(inline=True)
def _grad_block(Z, out, b, copy, y, sample_weight, smoothing, scale, lo, hi, off, losses, db):
    """Rows lo..hi of out := gradient of samples off+lo..off+hi; their weighted losses; db += the
    column sums of those gradient rows. Arguments as `_xent_grad_rows`, except db: (K,) float64,
    or size 0 for no bias gradient. Returns the number of bad rows."""
    bad = 0
    for r in range(lo, hi):
        i = off + r
        wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
        # `_row_grad` written out: each level of inlining copies the inlined body again (0.7 s
        # of the small-K chunk's cold compilation per level, load 4 on 2 cores)
        s, m, zy, ms, row_bad = _row_grad_stats(out, r, Z, r, b, copy, y[i], wi, smoothing, scale)
        losses[i] = 0.0 if wi == 0.0 else wi * _xent_from_stats(m, ms, s, zy, smoothing)
        bad += row_bad
        if db.shape[0] > 0:
            for k in range(out.shape[1]):
                db[k] += out[r, k]
    return bad


@_parallel_kernel
def _xent_grad_rows(Z, out, b, copy, y, sample_weight, smoothing, scale, losses, db_parts):
    """Gradient of the cross-entropy into out, per-sample losses, per-block db partials.

    Z             IN    (N, K) data dtype, C-contiguous: logits; read only when `copy`
    out           INOUT (N, K) data dtype, C-contiguous: the gradient of scale * sum of the
                        weighted losses; the logits on entry when not `copy`
    b             IN    (K,) data dtype: bias added to the logits; size 0: no bias
    copy          IN    bool: start from Z (False: work in place on out)
    y             IN    (N,) intp: labels in [0, K)
    sample_weight IN    (N,) float64; size 0: all ones
    smoothing     IN    float in [0, 1]: label smoothing
    scale         IN    float: factor of the gradient (1 / the reduction's denominator)
    losses        OUT   (n_blocks(N, ROW_BLOCK),) float64: block j's sum of its weighted
                        per-sample losses (not scaled), in the order of `_block_loss_sum`
    db_parts      INOUT (n_blocks(N, ROW_BLOCK), K) float64, zeros on entry: block j adds the
                        column sums of its gradient rows to row j; shape (n_blocks, 0): no db
    """
    N = out.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        block_bad, losses[blk] = _xent_grad_block(Z, out, b, copy, y, sample_weight, smoothing,
                                                  scale, lo, min(N, lo + ROW_BLOCK),
                                                  db_parts[blk])
        bad += block_bad
    return bad


@_parallel_kernel
def _xent_grad_rows_flat(Z, out, b, copy, y, sample_weight, smoothing, scale, losses, db_parts):
    """`_xent_grad_rows` up to FLAT_K_MAX classes (`_xent_grad_block_flat`); the same
    arguments."""
    N = out.shape[0]
    tab = _transpose_table(out.shape[1])
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        block_bad, losses[blk] = _xent_grad_block_flat(Z, out, b, copy, y, sample_weight,
                                                       smoothing, scale, lo,
                                                       min(N, lo + ROW_BLOCK), db_parts[blk], tab)
        bad += block_bad
    return bad


@_jit()
def _xent_grad_block(Z, out, b, copy, y, sample_weight, smoothing, scale, lo, hi, db):
    """Rows lo..hi of `_xent_grad_rows` (one prange iteration, shared by both twins).

    The gradient rows first, keeping each row's sum of exps, max, label logit and mean in `stats`;
    then the logs of the sums in one loop and the losses (`_grad_block_losses`). Short rows go
    to the flat block (see `_softmax_block_rows`). Given logits to copy and no bias, the rows
    are read from Z without a copy (`_row_grad_stats_from`): one pass over each row less, which
    at 4096 x 32000 (rows of 128-256 KB, reread from L2 by every pass) took the gradient from
    1.48x to 1.15x the copy floor in float64 and 1.51x to 1.17x in float32."""
    if out.shape[1] <= FLAT_K_MAX:
        return _xent_grad_block_flat(Z, out, b, copy, y, sample_weight, smoothing, scale, lo, hi,
                                     db, np.empty(0, np.int32))
    n = hi - lo
    # sum of exps (then its log), max, label logit, mean of row - max, weighted loss
    stats = np.empty((5, ROW_BLOCK))
    bad = 0
    ahead = _prefetch_distance(out)
    if copy and b.shape[0] == 0:
        for r in range(n):
            i = lo + r
            if ahead > 0 and i + ahead < out.shape[0]:
                _prefetch_row_read(Z, i + ahead)
                _prefetch_row_write(out, i + ahead)
            wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
            stats[0, r], stats[1, r], stats[2, r], stats[3, r], row_bad = _row_grad_stats_from(
                out, i, Z, i, y[i], wi, smoothing, scale)
            bad += row_bad
    else:
        for r in range(n):
            i = lo + r
            if ahead > 0 and i + ahead < out.shape[0]:
                if copy:
                    _prefetch_row_read(Z, i + ahead)
                _prefetch_row_write(out, i + ahead)
            wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
            stats[0, r], stats[1, r], stats[2, r], stats[3, r], row_bad = _row_grad_stats(
                out, i, Z, i, b, copy, y[i], wi, smoothing, scale)
            bad += row_bad
    return bad, _grad_block_losses(out, sample_weight, smoothing, lo, hi, db, stats)


@_jit(fastmath=False)
def _xent_grad_block_flat(Z, out, b, copy, y, sample_weight, smoothing, scale, lo, hi, db, tab):
    """Rows lo..hi (at most ROW_BLOCK) of `_xent_grad_rows_flat`: `_xent_grad_block` with the
    block transposed, T[k, r] holding class k of row lo + r, so that the max, the exps, the sums,
    the scaling and the losses run across the block's rows in loops of ROW_BLOCK iterations known
    when compiled (over each short row, at 10 classes, trip overheads, scalar remainders and
    horizontal reductions cost most of a row's 200 cycles). A short block repeats its last row
    in the columns it does not use.

    Per row the values of `_row_grad_stats`: the max, exp(z - max) in the data dtype, their sum
    in the order of `_row_sum`, then `_row_scale_grad`'s formulas (the exps times 1 / sum minus
    smoothing / K as one FMA). Compiled without fast-math flags: nothing here needs
    reassociation to vectorize (every loop runs across rows), and without it the order above is
    the one computed whatever module the block is compiled in."""
    n, K = hi - lo, out.shape[1]
    # T rows 0..K-1: the block transposed; K: row max; K + 1: label entry; K + 2: 1 / sum; K + 3:
    # weight * scale. F (float64) rows 0..7: the eight lanes of the sums; 8: weighted losses; 9:
    # sum of exps, then its log; 10: label logit; 11: mean of row - max;
    # 12: weight * scale. Indexed (array, row): views would cost reference counts.
    T = np.empty((K + 4, ROW_BLOCK), out.dtype)
    F = np.empty((13, ROW_BLOCK))
    if not copy:
        _transpose_in(out, lo, n, T)
    elif K * out.itemsize <= FLAT_DIRECT_ROW_BYTES:
        _transpose_in(Z, lo, n, T)
    else:  # out first, in one pass over the block: the block then stays in L1
        of, zf = out.reshape(out.shape[0] * K), Z.reshape(Z.shape[0] * K)
        for j in range(np.uint64(lo * K), np.uint64(hi * K)):
            of[j] = zf[j]
        _transpose_in(out, lo, n, T)
    if b.shape[0] > 0:
        for k in range(K):
            for r in range(ROW_BLOCK):
                T[k, r] += b[k]
    _col_max(T, K)
    for r in range(n):
        F[10, r] = T[y[lo + r], r]
    if smoothing != 0.0:
        _col_mean_shifted(T, K, F)
    _col_exp_sum(T, K, F)
    bad = 0
    for r in range(n):
        bad += 1 if _row_is_bad(T[K, r], F[9, r]) else 0
    for r in range(n):
        T[K + 1, r] = T[y[lo + r], r]
    _col_scale_grad(T, K, n, lo, sample_weight, smoothing, scale, F)
    _transpose_out(T, K, n, out, lo, tab)
    for r in range(n):
        out[lo + r, y[lo + r]] = T[K + 1, r]
    if db.shape[0] > 0:
        for i in range(lo, hi):
            for k in range(K):
                db[k] += out[i, k]
    return bad, _col_losses(T, K, n, lo, sample_weight, smoothing, F)


@_jit(inline=True)
def _grad_block_losses(out, sample_weight, smoothing, lo, hi, db, stats):
    """db += the column sums of gradient rows lo..hi of out (db size 0: not); returns the sum of
    the rows' weighted losses (`_block_loss_sum` of stats[4]) from `stats` (per row: sum of
    exps, max, label logit, mean of row - max), the logs of the sums in one loop (`_log_pos`
    vectorizes across rows, where a scalar log per row cost as much as the rest of a row of 10
    classes)."""
    if db.shape[0] > 0:
        for i in range(lo, hi):
            for k in range(out.shape[1]):
                db[k] += out[i, k]
    for r in range(hi - lo):
        stats[0, r] = _log_pos(stats[0, r])
    for r in range(hi - lo):
        wi = sample_weight[lo + r] if sample_weight.shape[0] > 0 else 1.0
        stats[4, r] = 0.0 if wi == 0.0 else wi * _xent_from_log(
            stats[0, r], stats[1, r], stats[3, r], stats[2, r], smoothing)
    return _block_loss_sum(stats, 4, hi - lo)


@_jit(inline=True)
def _block_loss_sum(S, j, n):
    """The sum of S[j, :n] (n <= ROW_BLOCK; S[j, n:ROW_BLOCK] is overwritten with zeros) as a fixed
    tree: halves of ROW_BLOCK entries added entry by entry (strict adds, vector loops), down to
    one. The gradient kernels return each block's loss this way: per-sample losses in an N-long
    array cost its allocation (page faults for every call's fresh pages), write and a pass of
    numpy's sum (at 1e6 x 10 float32 about a tenth of the call)."""
    for r in range(n, ROW_BLOCK):
        S[j, r] = 0.0
    h = ROW_BLOCK // 2
    while h > 0:
        for r in range(h):
            S[j, r] = _add(S[j, r], S[j, r + h])
        h //= 2
    return S[j, 0]


@_jit(inline=True)
def _transpose_in(A, lo, n, T):
    """T[k, r] := A[lo + r, k] for r < ROW_BLOCK, k < K: rows lo..lo + n as columns, the
    columns from n on repeating row lo + n - 1. Class by class, reading A flat at unsigned
    positions (with signed ones Numba's wraparound arithmetic kept the loops scalar)."""
    K = A.shape[1]
    Af = A.reshape(A.shape[0] * K)
    uK, base, last = np.uint64(K), np.uint64(lo) * np.uint64(K), np.uint64(n - 1)
    if n == ROW_BLOCK:  # a whole block: no clamp, so that the loop over rows vectorizes
        for k in range(uK):
            for r in range(np.uint64(ROW_BLOCK)):
                T[k, r] = Af[base + r * uK + k]
    else:
        for k in range(uK):
            for r in range(np.uint64(ROW_BLOCK)):
                T[k, r] = Af[base + min(r, last) * uK + k]


@_jit()
def _transpose_table(K):
    """The positions in T (K + 4, ROW_BLOCK), flattened, of a whole block's K * ROW_BLOCK entries
    in row order: int32, so that `_transpose_out` gathers 16 of them an instruction."""
    tab = np.empty(K * ROW_BLOCK, np.int32)
    for r in range(ROW_BLOCK):
        for k in range(K):
            tab[r * K + k] = k * ROW_BLOCK + r
    return tab


@_jit(inline=True)
def _transpose_out(T, K, n, A, lo, tab):
    """A[lo + r, k] := T[k, r] for r < n, k < K, A written flat at unsigned positions. A whole
    float32 block, given `_transpose_table(K)` as tab (else size 0), in one loop of contiguous
    stores gathering from T (1M x 10: 4.3x -> 4.1x the copy floor; in float64 the row loop
    was 4% faster)."""
    Af = A.reshape(A.shape[0] * K)
    uK, base = np.uint64(K), np.uint64(lo) * np.uint64(K)
    if n == ROW_BLOCK and tab.shape[0] > 0 and T.itemsize == 4:
        Tf = T.reshape(T.shape[0] * ROW_BLOCK)
        for j in range(np.uint64(K * ROW_BLOCK)):
            Af[base + j] = Tf[tab[j]]
    else:
        for r in range(np.uint64(n)):
            for k in range(uK):
                Af[base + r * uK + k] = T[k, r]


@_jit(inline=True)
def _col_max(T, K):
    """T[K, r] := `_row_max` of column r of T[:K]."""
    for r in range(ROW_BLOCK):
        T[K, r] = T[0, r]
    for k in range(K):
        for r in range(ROW_BLOCK):
            T[K, r] = _maxnum(T[K, r], T[k, r])


@_jit(inline=True)
def _col_mean_shifted(T, K, F):
    """F[11, r] := `_row_mean_shifted` of column r of T[:K] (its max in T[K, r]), the sum in
    the order of k."""
    for r in range(ROW_BLOCK):
        F[11, r] = 0.0
    for k in range(K):
        for r in range(ROW_BLOCK):
            F[11, r] += np.float64(T[k, r]) - np.float64(T[K, r])
    for r in range(ROW_BLOCK):
        F[11, r] = F[11, r] / K


@_jit(inline=True)
def _col_exp_sum(T, K, F):
    """T[k, r] := exp(T[k, r] - T[K, r]) for k < K; F[9, r] := their float64 sum in the
    order of `_row_sum` (eight lanes, combined pairwise, then the rest in order)."""
    for k in range(K):
        for r in range(ROW_BLOCK):
            T[k, r] = _exp_nonpos(T[k, r] - T[K, r])
    # 0.0 + e = e exactly for the exps (never -0.0): the lanes start at the first eight
    if K >= 8:
        for j in range(8):
            for r in range(ROW_BLOCK):
                F[j, r] = np.float64(T[j, r])
        for k in range(8, K - K % 8):
            for r in range(ROW_BLOCK):
                F[k % 8, r] = F[k % 8, r] + np.float64(T[k, r])
        for r in range(ROW_BLOCK):
            F[9, r] = ((F[0, r] + F[1, r]) + (F[2, r] + F[3, r])) + ((F[4, r] + F[5, r])
                                                                      + (F[6, r] + F[7, r]))
    else:
        for r in range(ROW_BLOCK):
            F[9, r] = 0.0
    for k in range(K - K % 8, K):
        for r in range(ROW_BLOCK):
            F[9, r] = F[9, r] + np.float64(T[k, r])


@_jit(inline=True)
def _col_scale_grad(T, K, n, lo, sample_weight, smoothing, scale, F):
    """T[k, r] := (exps / sum - smoothing / K) * weight * scale for k < K, and T[K + 1, r]
    (the label's exp on entry) := its own entry, as `_row_scale_grad` (sums in F[9])."""
    u = T.dtype.type(smoothing / K)
    if sample_weight.shape[0] > 0:
        for r in range(ROW_BLOCK):
            F[12, r] = sample_weight[lo + min(r, n - 1)] * scale
    else:
        for r in range(ROW_BLOCK):
            F[12, r] = 1.0 * scale
    for r in range(ROW_BLOCK):
        T[K + 2, r] = T.dtype.type(1.0 / F[9, r])
        T[K + 3, r] = T.dtype.type(F[12, r])
        T[K + 1, r] = T.dtype.type((np.float64(T[K + 1, r]) / F[9, r] - smoothing / K
                                    - (1.0 - smoothing)) * F[12, r])
    for k in range(K):
        for r in range(ROW_BLOCK):
            T[k, r] = _fma(T[k, r], T[K + 2, r], -u) * T[K + 3, r]


@_jit(inline=True)
def _col_losses(T, K, n, lo, sample_weight, smoothing, F):
    """The sum of the block's weighted losses, as `_grad_block_losses`: F[8, r] := the weighted
    loss of row lo + r from F (sum of exps, label logit, mean of row - max) and its max T[K, r]
    (the logs across rows), then their `_block_loss_sum`."""
    for r in range(ROW_BLOCK):
        F[9, r] = _log_pos(F[9, r])
    for r in range(n):
        wi = sample_weight[lo + r] if sample_weight.shape[0] > 0 else 1.0
        m = np.float64(T[K, r])
        x = (F[9, r] - (F[10, r] - m) if smoothing == 0.0
             else _xent_from_log(F[9, r], m, F[11, r], F[10, r], smoothing))
        F[8, r] = 0.0 if wi == 0.0 else wi * x
    return _block_loss_sum(F, 8, n)


# ------------------------------------------------------------------------------------------------
# Small-K linear layer: no BLAS, one read of X
# ------------------------------------------------------------------------------------------------


@_jit(inline=True)
def _logits_group(X, i, n, W, zb):
    """zb[r] := X[i + r] @ W.T for r < n (n <= 4).

    Full groups are register-blocked 4 rows x 4 classes: each vector of X and of W loaded feeds
    four FMAs (16 FMAs per 8 loads; the unblocked loop was load-bound at 4 per 5 and 1.5x slower).
    """
    K, d = W.shape
    zero = zb.dtype.type(0)
    if n < 4:
        for r in range(n):
            for k in range(K):
                a = zero
                for j in range(d):
                    a += X[i + r, j] * W[k, j]
                zb[r, k] = a
        return
    k = 0
    while k + 4 <= K:
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = zero
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = zero
        for j in range(d):
            x0, x1, x2, x3 = X[i, j], X[i + 1, j], X[i + 2, j], X[i + 3, j]
            w0, w1, w2, w3 = W[k, j], W[k + 1, j], W[k + 2, j], W[k + 3, j]
            a00 += x0 * w0
            a01 += x0 * w1
            a02 += x0 * w2
            a03 += x0 * w3
            a10 += x1 * w0
            a11 += x1 * w1
            a12 += x1 * w2
            a13 += x1 * w3
            a20 += x2 * w0
            a21 += x2 * w1
            a22 += x2 * w2
            a23 += x2 * w3
            a30 += x3 * w0
            a31 += x3 * w1
            a32 += x3 * w2
            a33 += x3 * w3
        zb[0, k], zb[0, k + 1], zb[0, k + 2], zb[0, k + 3] = a00, a01, a02, a03
        zb[1, k], zb[1, k + 1], zb[1, k + 2], zb[1, k + 3] = a10, a11, a12, a13
        zb[2, k], zb[2, k + 1], zb[2, k + 2], zb[2, k + 3] = a20, a21, a22, a23
        zb[3, k], zb[3, k + 1], zb[3, k + 2], zb[3, k + 3] = a30, a31, a32, a33
        k += 4
    for kk in range(k, K):  # leftover classes: 4 rows share each load of W
        a0 = a1 = a2 = a3 = zero
        for j in range(d):
            w = W[kk, j]
            a0 += X[i, j] * w
            a1 += X[i + 1, j] * w
            a2 += X[i + 2, j] * w
            a3 += X[i + 3, j] * w
        zb[0, kk], zb[1, kk], zb[2, kk], zb[3, kk] = a0, a1, a2, a3


@_jit(inline=True)
def _accumulate_dW_group(X, i, n, zb, dW):
    """dW += zb[:n].T @ X[i:i+n]; full groups blocked 4 classes x 4 rows like `_logits_group`."""
    K, d = dW.shape
    if n < 4:
        for r in range(n):
            for k in range(K):
                g = zb[r, k]
                for j in range(d):
                    dW[k, j] += g * X[i + r, j]
        return
    k = 0
    while k + 4 <= K:
        g00, g01, g02, g03 = zb[0, k], zb[0, k + 1], zb[0, k + 2], zb[0, k + 3]
        g10, g11, g12, g13 = zb[1, k], zb[1, k + 1], zb[1, k + 2], zb[1, k + 3]
        g20, g21, g22, g23 = zb[2, k], zb[2, k + 1], zb[2, k + 2], zb[2, k + 3]
        g30, g31, g32, g33 = zb[3, k], zb[3, k + 1], zb[3, k + 2], zb[3, k + 3]
        for j in range(d):
            x0, x1, x2, x3 = X[i, j], X[i + 1, j], X[i + 2, j], X[i + 3, j]
            dW[k, j] += g00 * x0 + g10 * x1 + g20 * x2 + g30 * x3
            dW[k + 1, j] += g01 * x0 + g11 * x1 + g21 * x2 + g31 * x3
            dW[k + 2, j] += g02 * x0 + g12 * x1 + g22 * x2 + g32 * x3
            dW[k + 3, j] += g03 * x0 + g13 * x1 + g23 * x2 + g33 * x3
        k += 4
    for kk in range(k, K):
        g0, g1, g2, g3 = zb[0, kk], zb[1, kk], zb[2, kk], zb[3, kk]
        for j in range(d):
            dW[kk, j] += g0 * X[i, j] + g1 * X[i + 1, j] + g2 * X[i + 2, j] + g3 * X[i + 3, j]


@_jit()
def _dX_group(W, i, n, zb, dX):
    """dX[i + r] := zb[r] @ W for r < n."""
    K, d = W.shape
    for r in range(n):
        row = dX[i + r]
        for j in range(d):
            row[j] = 0
        for k in range(K):
            g = zb[r, k]
            for j in range(d):
                row[j] += g * W[k, j]


@_jit()
def _gather_group(X, rows, i, n, xb):
    """xb[:n] := X[rows[i:i+n]] (an L1-sized copy: the rows are read from memory once, as in place)."""
    d = X.shape[1]
    for r in range(n):
        src = rows[i + r]
        for j in range(d):
            xb[r, j] = X[src, j]


@_parallel_kernel
def _linear_xent_small(X, rows, W, b, y, sample_weight, smoothing, scale, losses, dW_parts,
                       db_parts, dX):
    """Fused loss and gradients of softmax(X W^T + b) for small K, chunked over rows; returns the
    number of bad rows.

    The problem is made of the N rows `rows` of X (a mini-batch, gathered 4 rows at a time into a
    buffer that stays in L1: no copy of X[rows] is ever made), or of all of X. Chunk c (of C, fixed
    by the caller from the problem size) owns positions [c N / C, (c+1) N / C).

    X             IN  (n_X, d) data dtype, C-contiguous
    rows          IN  (N,) intp: valid row indices of X (the caller checks); size 0: all of X
    W             IN  (K, d) data dtype, C-contiguous
    b             IN  (K,) data dtype; size 0: no bias
    y             IN  (N,) intp: labels in [0, K), by position in the problem
    sample_weight IN  (N,) float64, by position; size 0: all ones
    smoothing     IN  float in [0, 1]: label smoothing
    scale         IN  float: factor of the gradients (1 / the reduction's denominator)
    losses        OUT (N,) float64: weighted per-sample losses (not scaled)
    dW_parts      OUT (C, K, d) data dtype: chunk c's partial dW (sum them for dW)
    db_parts      OUT (C, K) float64: chunk c's partial db; shape (C, 0): no bias gradient
    dX            OUT (N, d) data dtype: the gradient with respect to the rows; shape (0, 0): none
    """
    N = rows.shape[0] if rows.shape[0] > 0 else X.shape[0]
    n_chunks = dW_parts.shape[0]
    bad = 0
    for c in prange(n_chunks):
        bad += _linear_xent_chunk(X, rows, W, b, y, sample_weight, smoothing, scale,
                                  c * N // n_chunks, (c + 1) * N // n_chunks, losses,
                                  dW_parts[c], db_parts[c], dX)
    return bad


@_jit()
def _linear_xent_chunk(X, rows, W, b, y, sample_weight, smoothing, scale, lo, hi, losses, dW, db,
                       dX):
    """Positions lo..hi of `_linear_xent_small`, into this chunk's dW (K, d) and db (K,) or (0,)
    (one prange iteration, shared by both twins)."""
    gather = rows.shape[0] > 0
    K, d = W.shape
    zb = np.empty((SMALL_K_GROUP, K), dtype=X.dtype)
    xb = np.empty((SMALL_K_GROUP if gather else 0, d), dtype=X.dtype)
    dW[:, :] = 0
    db[:] = 0.0
    bad = 0
    for i in range(lo, hi, SMALL_K_GROUP):
        n = min(SMALL_K_GROUP, hi - i)
        if gather:
            _gather_group(X, rows, i, n, xb)
        # One call site per inlined helper (each site is compiled anew: two took twice as long).
        src, at = (xb, 0) if gather else (X, i)
        _logits_group(src, at, n, W, zb)
        bad += _grad_block(zb, zb, b, False, y, sample_weight, smoothing, scale, 0, n, i, losses,
                           db)
        _accumulate_dW_group(src, at, n, zb, dW)
        if dX.shape[0] > 0:
            _dX_group(W, i, n, zb, dX)
    return bad


@_parallel_kernel
def _linear_softmax_small(X, W, b, out):
    """out := softmax(X W^T + b) for small K without BLAS; returns the number of bad rows.

    X   IN  (N, d) data dtype, C-contiguous
    W   IN  (K, d) data dtype, C-contiguous
    b   IN  (K,) data dtype; size 0: no bias
    out OUT (N, K) data dtype, C-contiguous
    """
    N = X.shape[0]
    bad = 0
    for blk in prange(_n_blocks(N, ROW_BLOCK)):
        lo = blk * ROW_BLOCK
        bad += _linear_softmax_block(X, W, b, out, lo, min(N, lo + ROW_BLOCK))
    return bad


@_jit()
def _linear_softmax_block(X, W, b, out, lo, hi):
    """Rows lo..hi of `_linear_softmax_small` (one prange iteration, shared by both twins): logits
    in groups of SMALL_K_GROUP rows from lo (a multiple of it), then the softmax rows in place while
    the block is in L1."""
    for i in range(lo, hi, SMALL_K_GROUP):
        n = min(SMALL_K_GROUP, hi - i)
        _logits_group(X, i, n, W, out[i:i + n])
    return _softmax_block_flat(out, out, b, False, lo, hi)


# ------------------------------------------------------------------------------------------------
# Small dense helpers (K x d work, no temporaries)
# ------------------------------------------------------------------------------------------------


@_parallel_kernel
def _copy_labels(y, labels, n_classes):
    """labels := y, and how many of them lie outside [0, n_classes): the label check of
    `_validation.check_labels` for many labels, in one parallel pass (numpy's copy, min and max
    were three passes on one thread: about 1 ms a call at 10^6 labels, by the side of a
    cross_entropy_grad of 10^6 x 10 float32 taking 10 ms).

    y         IN  (n,) intp, C-contiguous
    labels    OUT (n,) intp, C-contiguous
    n_classes IN  int >= 0
    """
    n = y.shape[0]
    bad = 0
    for blk in prange(_n_blocks(n, LABEL_BLOCK)):
        lo = blk * LABEL_BLOCK
        bad += _copy_labels_block(y, labels, n_classes, lo, min(n, lo + LABEL_BLOCK))
    return bad


@_jit()
def _copy_labels_block(y, labels, n_classes, lo, hi):
    """Labels lo..hi of `_copy_labels` (one prange iteration, shared by both twins): each read
    once into a local, copied, and compared unsigned (a negative label becomes a huge one, so
    one compare covers both ends; unsigned positions keep the loop vectorized)."""
    bound = np.uint64(n_classes)
    bad = 0
    for p in range(np.uint64(lo), np.uint64(hi)):
        v = y[p]
        labels[p] = v
        if np.uint64(v) >= bound:
            bad += 1
    return bad


@_jit()
def _sum_squares(A):
    """||A||_F^2 accumulated in float64."""
    a = A.ravel()
    s = 0.0
    for k in range(a.shape[0]):
        v = np.float64(a[k])
        s += v * v
    return s


@_jit()
def _axpy(alpha, A, B):
    """B += alpha * A, in place (the L2 term of dW; B C-contiguous); returns how many entries of
    B came out NaN or infinite."""
    a = A.ravel()
    bb = B.ravel()
    bad = 0
    for k in range(a.shape[0]):
        bb[k] += alpha * a[k]
        if not np.isfinite(bb[k]):
            bad += 1
    return bad


# ------------------------------------------------------------------------------------------------
# Hessian-vector product of the linear layer's cross-entropy
#
# Per row: p = softmax(x W^T + b), t = x S^T + s_b, r = p * (t - p.t) (the Hessian of the
# cross-entropy in the logits, diag(p) - p p^T, times t), scaled by the row's weight; then
# HS = R^T X and Hs_b = sum_i r_i. The label (and label smoothing) does not enter: the target is
# constant in the logits. Same tiling as the loss: small K reads each group of 4 rows of X once for
# X W^T, X S^T and R^T X; larger K runs this row pass between BLAS GEMMs. p.t and the sum of
# exponentials are float64; p, t and r stay in the data dtype.
# ------------------------------------------------------------------------------------------------


@_jit(inline=True)
def _row_hvp(Z, T, i, b, s_b, ws):
    """T[i] := ws * p * (t - p.t) with p = softmax(Z[i] + b), t = T[i] + s_b; Z[i] is overwritten
    (by exp(z - max)). Returns whether the row of logits was bad (NaN, +inf, all -inf)."""
    K = Z.shape[1]
    if b.shape[0] > 0:
        for k in range(K):
            Z[i, k] += b[k]
    if s_b.shape[0] > 0:
        for k in range(K):
            T[i, k] += s_b[k]
    m = _row_max(Z, i)
    s = _row_exp_inplace(Z, i, m)
    pt = _row_dot(Z, i, 0, T, i, 0, K)
    # pt * (1 / s), not pt / s: with arcp, pt / s became pt * inv in some modules only.
    inv64 = 1.0 / s
    inv = Z.dtype.type(inv64)
    ptd = Z.dtype.type(_mul(pt, inv64))
    wsd = Z.dtype.type(ws)
    for k in range(K):  # strict products: see `_row_hvp_into`
        T[i, k] = _mul(_mul(Z[i, k], inv), T[i, k] - ptd) * wsd
    return _row_is_bad(m, s)


@_jit(inline=True)
def _row_hvp_into(A, i, K, b, s_b, ws, hsb):
    """Row i of A = [Z | T] (2K columns): T[i] := r = ws * p * (t - p.t) with
    p = softmax(Z[i] + b) and t = T[i] + s_b; Z[i] is overwritten (by exp(z - max)) and hsb (K,)
    float64 += r (size 0: not). Returns whether the row of logits was bad (NaN, +inf, all -inf).

    The dense paths' row pass (the sparse kernel keeps `_row_hvp`): one array, since two
    arguments that are the same array fail LLVM's runtime alias check and lose vectorization;
    T's columns indexed unsigned, since the negative-index test on K + k did too; the bias of the
    direction added in the p.t loop.
    """
    c0 = np.uint64(K)
    if b.shape[0] > 0:
        for k in range(K):
            A[i, k] += b[k]
    m = _row_max_n(A, i, K)
    for k in range(K):
        A[i, k] = _exp_nonpos(A[i, k] - m)
    # The sums are strict (`_row_sum_n`, `_row_dot`): reassociated, they came out 1 ulp apart
    # between a twin loaded from the cache and one compiled in the process (float64, 40 classes).
    s = _row_sum_n(A, i, 0, K)
    # t = T + s_b is stored, not recomputed where r is made: with reassoc, (T + s_b) - p.t was
    # reordered and r of a single class (p = 1) came out 1e-16 instead of 0.
    if s_b.shape[0] > 0:
        for k in range(K):
            A[i, c0 + np.uint64(k)] = A[i, c0 + np.uint64(k)] + s_b[k]
    pt = _row_dot(A, i, 0, A, i, K, K)
    # pt * (1 / s), not pt / s: with arcp, pt / s became pt * inv in some modules only.
    inv64 = 1.0 / s
    inv = A.dtype.type(inv64)
    ptd = A.dtype.type(_mul(pt, inv64))
    wsd = A.dtype.type(ws)
    # Strict products too: with reassoc, inv * wsd was hoisted out of the loop in some modules and
    # not in others.
    for k in range(K):
        A[i, c0 + np.uint64(k)] = _mul(_mul(A[i, k], inv), A[i, c0 + np.uint64(k)] - ptd) * wsd
    if hsb.shape[0] > 0:
        for k in range(K):
            hsb[k] += A[i, c0 + np.uint64(k)]
    return _row_is_bad(m, s)


@_jit()
def _hvp_block(A, K, b, s_b, sample_weight, scale, lo, hi, off, hsb):
    """Rows lo..hi of A = [Z | T] (samples off+lo..off+hi): T := r rows (`_row_hvp_into`), hsb +=
    their column sums (hsb (K,) float64, or size 0 for no intercept). Compiled once and called by
    both twins, by the small-K chunk and by the tiles. Returns the number of bad rows."""
    bad = 0
    for r in range(lo, hi):
        i = off + r
        wi = sample_weight[i] if sample_weight.shape[0] > 0 else 1.0
        bad += 1 if _row_hvp_into(A, r, K, b, s_b, wi * scale, hsb) else 0
    return bad


@_parallel_kernel
def _linear_hvp_small(X, WS, b, s_b, sample_weight, scale, HS_parts, hsb_parts):
    """Hessian-vector product of the linear layer for small K without BLAS, chunked over rows;
    returns the number of bad rows. Chunk c (of C, fixed by the caller from the problem size) owns
    rows [c N / C, (c+1) N / C).

    X             IN  (N, d) data dtype, C-contiguous
    WS            IN  (2K, d) data dtype, C-contiguous: [W; S], the point over the direction
    b             IN  (K,) data dtype: intercept; size 0: none
    s_b           IN  (K,) data dtype: intercept of the direction; size 0: none
    sample_weight IN  (N,) float64; size 0: all ones
    scale         IN  float: 1 / the reduction's denominator
    HS_parts      OUT (C, K, d) data dtype: chunk c's partial R^T X (sum them for HS)
    hsb_parts     OUT (C, K) float64: chunk c's partial sum of r; shape (C, 0): no intercept
    """
    N = X.shape[0]
    n_chunks = HS_parts.shape[0]
    bad = 0
    for c in prange(n_chunks):
        bad += _linear_hvp_chunk(X, WS, b, s_b, sample_weight, scale, c * N // n_chunks,
                                 (c + 1) * N // n_chunks, HS_parts[c], hsb_parts[c])
    return bad


@_jit()
def _linear_hvp_chunk(X, WS, b, s_b, sample_weight, scale, lo, hi, HS, hsb):
    """Rows lo..hi of `_linear_hvp_small` into this chunk's HS (K, d) and hsb (K,) or (0,) (one
    prange iteration, shared by both twins): per group of 4 rows, while they are in L1, the logits
    [Z | T] of W and of S in one pass, the row pass, and R^T X (R copied out of [Z | R])."""
    K = HS.shape[0]
    zt = np.empty((SMALL_K_GROUP, 2 * K), dtype=X.dtype)
    tb = np.empty((SMALL_K_GROUP, K), dtype=X.dtype)
    HS[:, :] = 0
    hsb[:] = 0.0
    bad = 0
    for i in range(lo, hi, SMALL_K_GROUP):
        n = min(SMALL_K_GROUP, hi - i)
        _logits_group(X, i, n, WS, zt)
        bad += _hvp_block(zt, K, b, s_b, sample_weight, scale, 0, n, i, hsb)
        for r in range(n):
            for k in range(K):
                tb[r, k] = zt[r, K + k]
        _accumulate_dW_group(X, i, n, tb, HS)
    return bad


# ------------------------------------------------------------------------------------------------
# The BLAS path (K > SMALL_K_MAX): GEMMs on tiles, single-threaded, inside one parallel region
#
# One pool owns the cores: Numba's threads each call a single-threaded GEMM on their own sub-tile
# (the caller holds BLAS at one thread, `_threads.single_threaded_blas`), so no second pool spins
# against them and no GEMM's bits depend on BLAS's thread count. The cut depends on the problem
# size only: sub-tiles of rows, grouped into chains of consecutive sub-tiles. A chain is one item:
# per sub-tile, Z_s = X_s W^T into the worker's own block of logits, the fused row pass turning it
# into G_s, dX_s = G_s W, and G_s^T X_s added (GEMM beta = 1) to the chain's K x d partial while
# X_s is in cache; chain 0's partial is dW itself, the others are added to it in chain order at
# the end. Where K x d is too large for two partials, tiles of rows go through three passes instead:
# the tile's logits by blocks of classes, the row pass by sub-tiles, then dX cut into blocks of
# features and dW into blocks of classes or features, each entry with one writer (W is packed once
# a tile, not once a sub-tile). (Cutting dW into blocks re-packs the shared GEMM operand once per
# block: 1.3-2x one GEMM at 256 x 100; a chain costs one K x d sum per call.) Workers claim the
# next item from an atomic counter: a thread slowed by a busy core takes fewer items instead of
# holding the others at a barrier, and which thread computes an item never changes its bits.
# ------------------------------------------------------------------------------------------------

_GEMM_SIG = types.void(*([types.voidptr] * 13))
for _name in ("sgemm", "dgemm"):
    # By symbol name, so that machine code loaded from the cache links to this process's BLAS.
    llvm_binding.add_symbol(
        "fastsoftmax_" + _name, get_cython_function_address("scipy.linalg.cython_blas", _name)
    )
_sgemm = types.ExternalFunction("fastsoftmax_sgemm", _GEMM_SIG)
_dgemm = types.ExternalFunction("fastsoftmax_dgemm", _GEMM_SIG)


@_jit(inline=True)
def _gemm(trans_a, trans_b, alpha, A, B, beta, C):
    """C := alpha op(A) op(B) + beta C for row-major 2-D views (rows may be strided, elements
    contiguous), op(M) = M.T when trans. scipy's Fortran GEMM computes C^T = op(B)^T op(A)^T on
    the same memory. beta = 0 overwrites C (NaN in C does not propagate), as BLAS does."""
    m, n = C.shape
    k = A.shape[0] if trans_a else A.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:  # BLAS rejects empty operands; the product is zero
        for i in range(m):
            for j in range(n):
                C[i, j] = 0 if beta == 0 else beta * C[i, j]
        return
    ints = np.empty(6, np.int32)
    ints[0], ints[1], ints[2] = n, m, k
    ints[3] = max(1, B.strides[0] // B.itemsize)
    ints[4] = max(1, A.strides[0] // A.itemsize)
    ints[5] = max(1, C.strides[0] // C.itemsize)
    flags = np.empty(2, np.uint8)
    flags[0] = 84 if trans_b else 78  # 'T' / 'N'
    flags[1] = 84 if trans_a else 78
    scalars = np.empty(2, C.dtype)
    scalars[0], scalars[1] = alpha, beta
    if C.itemsize == 4:
        _sgemm(flags[0:].ctypes, flags[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes,
               ints[2:].ctypes, scalars[0:].ctypes, B.ctypes, ints[3:].ctypes, A.ctypes,
               ints[4:].ctypes, scalars[1:].ctypes, C.ctypes, ints[5:].ctypes)
    else:
        _dgemm(flags[0:].ctypes, flags[1:].ctypes, ints[0:].ctypes, ints[1:].ctypes,
               ints[2:].ctypes, scalars[0:].ctypes, B.ctypes, ints[3:].ctypes, A.ctypes,
               ints[4:].ctypes, scalars[1:].ctypes, C.ctypes, ints[5:].ctypes)


@intrinsic
def _fetch_add(typingctx, counter, slot):
    """Atomically counter[slot] += 1; returns the value before (the item this worker claims)."""
    sig = types.int64(counter, slot)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", ptr, one, "monotonic")

    return sig, codegen


def _claim(counter, slot):
    """The next unclaimed item of `counter[slot]` (an int64 array's slot)."""
    raise NotImplementedError  # only callable from jitted code


@overload(_claim)
def _claim_overload(counter, slot):
    return lambda counter, slot: _fetch_add(counter, slot)


if config.DISABLE_JIT:

    def _gemm(trans_a, trans_b, alpha, A, B, beta, C):  # noqa: F811
        product = alpha * ((A.T if trans_a else A) @ (B.T if trans_b else B))
        C[...] = product if beta == 0 else product + beta * C

    def _claim(counter, slot):  # noqa: F811 (no threads without the JIT)
        counter[slot] += 1
        return counter[slot] - 1


@_jit(inline=True)
def _col_range(c, col_block, K, d, by_class):
    """Columns of block c of dW: classes [lo, hi) when by_class, else features [lo, hi)."""
    lo = c * col_block
    return lo, min(K if by_class else d, lo + col_block)


@_jit()
def _tile_dW_block(X, G, lo, n, dW, c, col_block, by_class):
    """Block c of dW += G^T X_t for the tile of n rows at lo (G = its first n rows; one item)."""
    K, d = dW.shape
    a, e = _col_range(c, col_block, K, d, by_class)
    if by_class:
        _gemm(True, False, 1.0, G[:n, a:e], X[lo:lo + n], 1.0, dW[a:e])
    else:
        _gemm(True, False, 1.0, G[:n], X[lo:lo + n, a:e], 1.0, dW[:, a:e])


@_jit()
def _merge_slots(slots, dW, lo, hi):
    """Rows lo..hi of dW += the sum of the slots' rows, in slot order (one item)."""
    for s in range(slots.shape[0]):
        for k in range(lo, hi):
            for j in range(dW.shape[1]):
                dW[k, j] += slots[s, k, j]


@_jit()
def _sum_items(bads, parts, n, db):
    """db += the first n rows of parts, in item order; returns the sum of bads (the bad rows)."""
    bad = 0
    for s in range(n):
        bad += bads[s]
        for k in range(db.shape[0]):
            db[k] += parts[s, k]
    return bad


# Features per block of a tile's dX = G_t W without chains (the count from d only): each block packs
# its columns of W once a tile and G_t once (one 480 x 32000 x 1024 float32 tile, one thread: blocks
# of 512 features 1.01x one GEMM, of 256 1.04x; 80-row sub-tiles, which re-packed all of W each,
# 1.15x).
DX_COLS = 512


@_jit()
def _tile_dX_block(W, G, lo, n, dX, c, dx_block):
    """Features of block c of dX[lo:lo+n] := G W for the tile of n rows at lo (G = its first n
    rows; one item, the only writer of those entries)."""
    a, e = _col_range(c, dx_block, 0, W.shape[1], False)
    _gemm(False, False, 1.0, G[:n], W[:, a:e], 0.0, dX[lo:lo + n, a:e])


@_jit(inline=True)
def _dX_blocks(dX):
    """(blocks, features per block) of a tile's dX: about DX_COLS features each, aligned to 16
    (64-byte column starts in float32); (0, 1) when dX is not computed."""
    d = dX.shape[1]
    if dX.shape[0] == 0 or d == 0:
        return 0, 1
    n_dx = _n_blocks(d, DX_COLS)
    block = ((d + n_dx - 1) // n_dx + 15) // 16 * 16
    return _n_blocks(d, block), block


@_jit()
def _tile_logits_block(X, W, lo, n, Z, c, class_block):
    """Z[:n] columns of class block c := X_t W_c^T for the tile of n rows at lo (one item). Cut by
    classes, the tile's GEMM packs W once in all; cut by rows it packed all of W per sub-tile
    (4096 x 1024 x 32000 float32: sub-tiles of 80 rows took 1.27x one GEMM)."""
    a, e = _col_range(c, class_block, W.shape[0], 0, True)
    _gemm(False, True, 1.0, X[lo:lo + n], W[a:e], 0.0, Z[:n, a:e])


@_jit()
def _tile_grad_block(X, W, b, y, sample_weight, smoothing, scale, lo, a, e, Z, losses, db, dX,
                     slot, beta, logits):
    """Sub-tile rows a..e of the tile at lo (samples lo+a..lo+e; one item): Z[a:e] := X_s W^T
    (when `logits`; else Z[a:e] holds them), the fused row pass turning it into the gradient G_s
    (losses, db += its column sums), dX_s := G_s W, and slot := G_s^T X_s + beta slot (slot
    (K, d), or (0, 0) for none). Returns the number of bad rows."""
    Xs = X[lo + a:lo + e]
    if logits:
        _gemm(False, True, 1.0, Xs, W, 0.0, Z[a:e])
    bad = _grad_block(Z, Z, b, False, y, sample_weight, smoothing, scale, a, e, lo, losses, db)
    if dX.shape[0] > 0:
        _gemm(False, False, 1.0, Z[a:e], W, 0.0, dX[lo + a:lo + e])
    if slot.shape[0] > 0:
        _gemm(True, False, 1.0, Z[a:e], Xs, beta, slot)
    return bad


@_jit(inline=True)
def _chain_rows(c, n_chains, N, sub_rows):
    """Rows [lo, hi) of chain c: the sub-tiles [c n / C, (c + 1) n / C) of n = ceil(N / sub_rows)."""
    n_sub = _n_blocks(N, sub_rows)
    return (c * n_sub // n_chains) * sub_rows, min(N, ((c + 1) * n_sub // n_chains) * sub_rows)


@_jit()
def _chain_grad(X, W, b, y, sample_weight, smoothing, scale, lo, hi, sub_rows, Z, losses, db, dX,
                acc):
    """Rows lo..hi, one chain (one item): its sub-tiles in order through `_tile_grad_block` in the
    worker's logit block Z (sub_rows x K); acc := the sum of their G_s^T X_s, in order (the first
    GEMM with beta = 0, the next ones with beta = 1). Returns the number of bad rows."""
    bad = 0
    for a in range(lo, hi, sub_rows):
        bad += _tile_grad_block(X, W, b, y, sample_weight, smoothing, scale, a, 0,
                                min(hi - a, sub_rows), Z, losses, db, dX, acc,
                                0.0 if a == lo else 1.0, True)
    return bad


@_parallel_kernel
def _linear_xent_tiled(X, W, b, y, sample_weight, smoothing, scale, losses, dW, db, dX, Z,
                       db_parts, slots, chains, rows, sub_rows, col_block, by_class, class_block,
                       workers):
    """Loss, dW, db and dX of the linear layer through BLAS tiles; returns the number of bad rows.

    X             IN    (N, d) data dtype, C-contiguous
    W             IN    (K, d) data dtype, C-contiguous
    b             IN    (K,) data dtype; size 0: no bias
    y             IN    (N,) intp: labels in [0, K)
    sample_weight IN    (N,) float64; size 0: all ones
    smoothing     IN    float in [0, 1]: label smoothing
    scale         IN    float: 1 / the reduction's denominator
    losses        OUT   (N,) float64: weighted per-sample losses (not scaled)
    dW            INOUT (K, d) data dtype, C-contiguous: zeros on entry (read without chains); G^T X
    db            INOUT (K,) float64: zeros on entry; += column sums of G; size 0: no bias
    dX            OUT   (N, d) data dtype, C-contiguous: G W (by sub-tiles with chains, else by
                        blocks of features per tile, `_dX_blocks`); size 0: not computed
    Z             OUT   (workers x sub_rows with chains, else rows; K) data dtype, C-contiguous:
                        scratch logits; with chains prange iteration w runs its items in rows
                        [w sub_rows, (w + 1) sub_rows) (which block an item uses does not change
                        its bits), else sub-tile s of a tile in the tile's rows [s sub_rows, ...)
    db_parts      OUT   (chains, or sub-tiles of a tile; K or 0) float64: scratch for db
    slots         OUT   (chains - 1, K, d) data dtype: scratch, the partials of dW of chains
                        1.. (chain 0 accumulates into dW); (0, K, d) without chains
    chains        IN    int: runs of consecutive sub-tiles (`_chain_rows`), one item each, each
                        accumulating its G^T X into its own partial; 0: dW by blocks of col_block
                        per tile of `rows` rows instead
    rows          IN    int: rows of a tile without chains, a multiple of sub_rows (or N)
    sub_rows      IN    int: rows of a sub-tile
    col_block     IN    int: classes (by_class) or features per block of dW (without chains)
    by_class      IN    bool: dW cut into blocks of classes (else of features)
    class_block   IN    int: classes per block of a tile's logits (without chains)
    workers       IN    int: prange iterations that claim items (Numba's thread count; the
                        results do not depend on it)
    """
    N = X.shape[0]
    K, d = dW.shape
    counter = np.zeros(3, np.int64)
    bads = np.zeros(db_parts.shape[0], np.int64)
    bad = 0
    if chains > 0:
        db_parts[:] = 0.0
        for w in prange(workers):
            Zw = Z[w * sub_rows:(w + 1) * sub_rows]
            c = _claim(counter, 0)
            while c < chains:
                lo, hi = _chain_rows(c, chains, N, sub_rows)
                bads[c] = _chain_grad(X, W, b, y, sample_weight, smoothing, scale, lo, hi,
                                      sub_rows, Zw, losses, db_parts[c], dX,
                                      dW if c == 0 else slots[c - 1])
                c = _claim(counter, 0)
        bad = _sum_items(bads, db_parts, chains, db)
        for _ in prange(workers):  # dW += the slots in chain order, by blocks of rows
            c = _claim(counter, 1)
            while c * ROW_BLOCK < K and slots.shape[0] > 0:
                _merge_slots(slots, dW, c * ROW_BLOCK, min(K, c * ROW_BLOCK + ROW_BLOCK))
                c = _claim(counter, 1)
        return bad
    none = np.empty((0, 0), X.dtype)
    n_cols = _n_blocks(K if by_class else d, col_block)
    n_classes = _n_blocks(K, class_block)
    n_dx, dx_block = _dX_blocks(dX)
    for lo in range(0, N, rows):
        n = min(rows, N - lo)
        n_sub = _n_blocks(n, sub_rows)
        db_parts[:n_sub] = 0.0
        counter[:] = 0
        for _ in prange(workers):  # the tile's logits by blocks of classes
            c = _claim(counter, 0)
            while c < n_classes:
                _tile_logits_block(X, W, lo, n, Z, c, class_block)
                c = _claim(counter, 0)
        for _ in prange(workers):  # the row pass by sub-tiles of rows
            s = _claim(counter, 1)
            while s < n_sub:
                a = s * sub_rows
                bads[s] = _tile_grad_block(
                    X, W, b, y, sample_weight, smoothing, scale, lo, a, min(n, a + sub_rows), Z,
                    losses, db_parts[s], none, none, 0.0, False)
                s = _claim(counter, 1)
        bad += _sum_items(bads, db_parts, n_sub, db)
        for _ in prange(workers):  # dX by blocks of features (the larger items first), dW
            c = _claim(counter, 2)
            while c < n_dx + n_cols:
                if c < n_dx:
                    _tile_dX_block(W, Z, lo, n, dX, c, dx_block)
                else:
                    _tile_dW_block(X, Z, lo, n, dW, c - n_dx, col_block, by_class)
                c = _claim(counter, 2)
    return bad


# ------------------------------------------------------------------------------------------------
# Curvature per feature: the preconditioner of newton-cg
#
# The diagonal of the objective's Hessian at W[k, j] is sum_i w_i p_ik (1 - p_ik) x_ij^2 / normalizer
# + alpha. newton-cg preconditions with its mean over the classes, the same for every class of a
# feature (docs/design.md, "Hessian-vector product"): per row one float64 weight
# q_i = w_i scale mean_k p_ik (1 - p_ik), then D_j = sum_i q_i x_ij^2 (and sum_i q_i for the
# intercept). One read of X, logits as the small-K loss kernel computes them.
# ------------------------------------------------------------------------------------------------


@_parallel_kernel
def _feature_curvature_small(X, W, b, sample_weight, scale, D_parts, q_parts):
    """Per-feature curvature of the linear layer's cross-entropy for small K without BLAS, chunked
    over rows; returns the number of bad rows. Chunk c (of C, fixed by the caller from the problem
    size) owns rows [c N / C, (c+1) N / C).

    X             IN  (N, d) data dtype, C-contiguous
    W             IN  (K, d) data dtype, C-contiguous: the point
    b             IN  (K,) data dtype: intercept; size 0: none
    sample_weight IN  (N,) float64; size 0: all ones
    scale         IN  float: 1 / the reduction's denominator
    D_parts       OUT (C, d) float64: chunk c's partial sum_i q_i x_ij^2
    q_parts       OUT (C,) float64: chunk c's partial sum_i q_i
    """
    N = X.shape[0]
    n_chunks = D_parts.shape[0]
    bad = 0
    for c in prange(n_chunks):
        bad += _feature_curvature_chunk(X, W, b, sample_weight, scale, c * N // n_chunks,
                                        (c + 1) * N // n_chunks, D_parts[c], q_parts[c:c + 1])
    return bad


@_jit()
def _tile_softmax_block(X, W, b, out, lo, hi):
    """Rows lo..hi of `_linear_softmax_tiled` (one item): logits by GEMM, softmax in place."""
    _gemm(False, True, 1.0, X[lo:hi], W, 0.0, out[lo:hi])
    return _softmax_block_rows(out, out, b, False, lo, hi)


@_parallel_kernel
def _linear_softmax_tiled(X, W, b, out, sub_rows, workers):
    """out := softmax(X W^T + b) through BLAS on sub-tiles; returns the number of bad rows.

    X        IN  (N, d) data dtype, C-contiguous
    W        IN  (K, d) data dtype, C-contiguous
    b        IN  (K,) data dtype; size 0: no bias
    out      OUT (N, K) data dtype, C-contiguous
    sub_rows IN  int: rows per item
    workers  IN  int: as `_linear_xent_tiled`
    """
    N = X.shape[0]
    n_sub = _n_blocks(N, sub_rows)
    bads = np.zeros(n_sub, np.int64)
    counter = np.zeros(1, np.int64)
    for _ in prange(workers):
        s = _claim(counter, 0)
        while s < n_sub:
            lo = s * sub_rows
            bads[s] = _tile_softmax_block(X, W, b, out, lo, min(N, lo + sub_rows))
            s = _claim(counter, 0)
    return bads.sum()


@_jit()
def _tile_hvp_block(X, WS, b, s_b, sample_weight, scale, lo, a, e, ZT, z0, hsb, slot, beta,
                    logits):
    """Sub-tile rows a..e of the tile at lo (one item), in rows z0..z0+e-a of ZT (2K columns):
    [Z | T] := X_s [W; S]^T in one GEMM (X_s packed once; when `logits`, else ZT holds them), the
    row pass turning T into R, and slot := R_s^T X_s + beta slot (as `_tile_grad_block`)."""
    K = WS.shape[0] // 2
    Xs = X[lo + a:lo + e]
    n = e - a
    if logits:
        _gemm(False, True, 1.0, Xs, WS, 0.0, ZT[z0:z0 + n])
    bad = _hvp_block(ZT, K, b, s_b, sample_weight, scale, z0, z0 + n, lo + a - z0, hsb)
    if slot.shape[0] > 0:
        _gemm(True, False, 1.0, ZT[z0:z0 + n, K:], Xs, beta, slot)
    return bad


@_jit()
def _chain_hvp(X, WS, b, s_b, sample_weight, scale, lo, hi, sub_rows, ZT, hsb, acc):
    """Rows lo..hi, one chain (one item), as `_chain_grad`: its sub-tiles in order through
    `_tile_hvp_block` in the worker's block ZT (sub_rows x 2K); acc := the sum of their
    R_s^T X_s. Returns the number of bad rows."""
    bad = 0
    for a in range(lo, hi, sub_rows):
        bad += _tile_hvp_block(X, WS, b, s_b, sample_weight, scale, a, 0, min(hi - a, sub_rows),
                               ZT, 0, hsb, acc, 0.0 if a == lo else 1.0, True)
    return bad


@_parallel_kernel
def _linear_hvp_tiled(X, WS, b, s_b, sample_weight, scale, HS, hsb, ZT, hsb_parts, slots,
                      chains, rows, sub_rows, col_block, by_class, class_block, workers):
    """Hessian-vector product of the linear layer through BLAS tiles; returns the number of bad
    rows. Arguments as `_linear_hvp_small` and `_linear_xent_tiled`, and:

    WS        IN    (2K, d) data dtype, C-contiguous: [W; S], the point over the direction
    HS        INOUT (K, d) data dtype, C-contiguous: zeros on entry (read without chains); R^T X
    hsb       INOUT (K,) float64: zeros on entry; += column sums of R; size 0: no intercept
    ZT        OUT   (workers x sub_rows with chains, else rows; 2K) data dtype, C-contiguous:
                    scratch [Z | T], used as `_linear_xent_tiled` uses Z
    hsb_parts OUT   (chains, or sub-tiles of a tile; K or 0) float64: scratch
    slots     OUT   (chains - 1, K, d) data dtype, or (0, K, d): as `_linear_xent_tiled`
    class_block IN  int: rows of [W; S] per block of a tile's [Z | T] (without chains; [W; S]
                    packed once a tile, not once a sub-tile)
    """
    N = X.shape[0]
    K, d = HS.shape
    counter = np.zeros(3, np.int64)
    bads = np.zeros(hsb_parts.shape[0], np.int64)
    bad = 0
    if chains > 0:
        hsb_parts[:] = 0.0
        for w in prange(workers):
            ZTw = ZT[w * sub_rows:(w + 1) * sub_rows]
            c = _claim(counter, 0)
            while c < chains:
                lo, hi = _chain_rows(c, chains, N, sub_rows)
                bads[c] = _chain_hvp(X, WS, b, s_b, sample_weight, scale, lo, hi, sub_rows, ZTw,
                                     hsb_parts[c], HS if c == 0 else slots[c - 1])
                c = _claim(counter, 0)
        bad = _sum_items(bads, hsb_parts, chains, hsb)
        for _ in prange(workers):  # HS += the slots in chain order, by blocks of rows
            c = _claim(counter, 1)
            while c * ROW_BLOCK < K and slots.shape[0] > 0:
                _merge_slots(slots, HS, c * ROW_BLOCK, min(K, c * ROW_BLOCK + ROW_BLOCK))
                c = _claim(counter, 1)
        return bad
    none = np.empty((0, 0), X.dtype)
    n_cols = _n_blocks(K if by_class else d, col_block)
    n_classes = _n_blocks(2 * K, class_block)
    for lo in range(0, N, rows):
        n = min(rows, N - lo)
        n_sub = _n_blocks(n, sub_rows)
        hsb_parts[:n_sub] = 0.0
        counter[:] = 0
        for _ in prange(workers):  # the tile's [Z | T] by blocks of rows of [W; S]
            c = _claim(counter, 2)
            while c < n_classes:
                _tile_logits_block(X, WS, lo, n, ZT, c, class_block)
                c = _claim(counter, 2)
        for _ in prange(workers):
            s = _claim(counter, 0)
            while s < n_sub:
                a = s * sub_rows
                bads[s] = _tile_hvp_block(
                    X, WS, b, s_b, sample_weight, scale, lo, a, min(n, a + sub_rows), ZT, a,
                    hsb_parts[s], none, 0.0, False)
                s = _claim(counter, 0)
        bad += _sum_items(bads, hsb_parts, n_sub, hsb)
        for _ in prange(workers):
            c = _claim(counter, 1)
            while c < n_cols:
                _tile_dW_block(X, ZT[:, K:], lo, n, HS, c, col_block, by_class)
                c = _claim(counter, 1)
    return bad


@_jit()
def _feature_curvature_chunk(X, W, b, sample_weight, scale, lo, hi, D, q_sum):
    """Rows lo..hi of `_feature_curvature_small` into this chunk's D (d,) and q_sum (1,), both
    float64 (one prange iteration, shared by both twins): per group of 4 rows the logits and
    their softmax in place, then each row's weight q_i and its squares."""
    K, d = W.shape
    zb = np.empty((SMALL_K_GROUP, K), dtype=X.dtype)
    D[:] = 0.0
    q_sum[0] = 0.0
    bad = 0
    for i in range(lo, hi, SMALL_K_GROUP):
        n = min(SMALL_K_GROUP, hi - i)
        _logits_group(X, i, n, W, zb)
        bad += _softmax_block_flat(zb, zb, b, False, 0, n)
        for r in range(n):
            v = 0.0
            for k in range(K):
                p = np.float64(zb[r, k])
                v += p * (1.0 - p)
            q = v / K * scale * (sample_weight[i + r] if sample_weight.shape[0] > 0 else 1.0)
            q_sum[0] += q
            for j in range(d):
                x = np.float64(X[i + r, j])
                D[j] += q * (x * x)
    return bad
