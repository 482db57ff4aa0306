r"""ACT's halting step in C: the halting machinery without operator dispatch.

After each iteration of an ACT stage, PyTorch runs about twenty small operator calls (pooling of s
and u, the halting unit's three layers, ReLUs, a sigmoid, ACT's rule, ``y += p·s``, counting the
halted samples) that at these sizes cost more in dispatch than in arithmetic: measured on 2 cores,
the shipped model spent 1.58–1.70x the time of "no-halt" (the same iterations with no halting) at
batch 1. For a BatchNorm-folded model (``fold.py``) under the paper's policy,
:class:`~iamnn.models.halting.ACT`, at inference, that step is one call into ``act_kernel.c``:
:class:`KernelOneSample` at batch 1, :class:`KernelStep` for a batch (both decide inside
the stage's one loop, ``IterativeStage.run``). :func:`weighted_sum` forms
y = Σ p_n·s_n where samples halt, in one pass over the states (forward and backward), and in
training :func:`pooled_relu_update` forms s = ReLU(s + u) with the poolings the halting unit reads
in one pass. The C source is compiled on first use with the system's C compiler and cached under
``~/.cache/iamnn/kernels``. A cached library is loaded only if this user built it there: the
folder and file are this user's, not writable by others, not symlinks, and the file's SHA-256 is
the one recorded at build; otherwise it is rebuilt (in a private temporary folder when the cache
folder itself is not private), since loading a library runs its constructors.

It is an optimisation, never a requirement: with no C compiler, on another device or dtype, for
another policy, or with ``IAMNN_KERNELS=0`` in the environment, the PyTorch ops run; tests check
that both give the same iterations, outputs, ponder costs and gradients.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor, nn

from ..errors import one_line
from ..files import file_sha256
from .halting import ACT, HaltingPolicy

try:  # a private helper of PyTorch's; without it, assume no dispatch mode watches
    from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode
except ImportError:  # pragma: no cover

    def _current_dispatch_mode() -> None:
        return None


SOURCE = Path(__file__).with_name("act_kernel.c")
# tried in turn: -march=native for this CPU's vector units; -fno-trapping-math so that a select
# (the ReLU mask of a gradient) vectorises (GCC keeps it a branch, element by element, when a
# comparison may raise a floating-point exception: the pooled update's backward ran 10x slower than
# its forward); it changes no value. -fopenmp to split a batch over the threads of PyTorch's own
# OpenMP runtime (the same libgomp.so.1, already loaded by torch)
FLAGS = (
    ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp"),
    ("-O3", "-march=native", "-fno-trapping-math"),
    ("-O3",),
)


class _Unit(ctypes.Structure):
    """``struct iamnn_unit`` of act_kernel.c."""

    _fields_ = [(name, ctypes.c_long) for name in ("hidden", "s_channels", "u_channels", "x_channels")]
    _fields_ += [(name, ctypes.c_void_p) for name in ("w1s_t", "w1u_t", "w1x_t", "b1", "w2_t", "b2", "w3", "b3")]


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$IAMNN_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/iamnn/kernels``."""
    if os.environ.get("IAMNN_KERNEL_CACHE"):
        return Path(os.environ["IAMNN_KERNEL_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "iamnn" / "kernels"


def _cpu_id() -> bytes:
    """What -march=native depends on: the CPU's feature flags (a shared cache may serve other CPUs)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((line for line in lines if line.startswith(("flags", "Features"))), "").encode()
    except OSError:
        return platform.processor().encode()


def _refusal(path: Path) -> str | None:
    """Why a file or folder of the kernel cache must not be trusted, or None: a symlink, another
    user's, or writable by others (any of them could plant a library whose constructor runs here)."""
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"{path} cannot be read ({err.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink"
    if st.st_uid != os.getuid():
        return f"{path} belongs to another user"
    if st.st_mode & 0o022:
        return f"{path} is writable by others"
    return None


def _note(text: str) -> None:
    """One line on stderr (a Python warning would add its file, line and source: three lines a run)."""
    print(f"iamnn: note: {text}", file=sys.stderr)


def _verified(path: Path) -> bool:
    """Whether ``path`` is a library this user built: private (:func:`_refusal`), and its content
    the one whose hash was recorded beside it at build (a planted, truncated or empty file is not)."""
    record = path.with_name(path.name + ".sha256")
    if not path.exists() or _refusal(path) or _refusal(record):
        return False
    try:
        return record.read_text().strip() == file_sha256(path)
    except OSError:
        return False


@functools.cache
def _private_dir(reason: str) -> Path:
    """A folder of this process's own for a build the shared cache cannot hold safely (said once)."""
    _note(f"the kernel cache is not usable ({reason}); building the kernel in a private folder")
    return Path(tempfile.mkdtemp(prefix="iamnn-kernels-"))


def _compile(compiler: str) -> Path:
    """The kernel library for this source, compiler, flags and CPU: from the cache when it verifies
    (:func:`_verified`), else built (under a file lock) into the cache, or into a private folder
    when the cache folder itself is not private."""
    source = SOURCE.read_bytes()
    errors = []
    cache = cache_dir()
    with contextlib.suppress(OSError):
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = _refusal(cache) is None
    for flags in FLAGS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), *map(str.encode, flags), _cpu_id()])).hexdigest()
        name = f"act_kernel-{key[:16]}.so"
        if private and _verified(cache / name):  # a read-only cache still serves what it holds
            return cache / name
        reason = _refusal(cache) or (None if os.access(cache, os.W_OK | os.X_OK) else f"{cache} is read-only")
        path = (cache if reason is None else _private_dir(reason)) / name
        if _verified(path):
            return path
        with FileLock(str(path) + ".lock", timeout=300):  # two processes compiling at once: one does
            if _verified(path):
                return path
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            run = subprocess.run(
                [compiler, *flags, "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-lm"],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if run.returncode == 0:
                record = path.with_name(path.name + ".sha256")
                record.unlink(missing_ok=True)  # a planted symlink is replaced, never written through
                record.write_text(file_sha256(tmp) + "\n")
                os.replace(tmp, path)  # atomic: a reader never sees a half-written library
                return path
            tmp.unlink(missing_ok=True)
            errors.append(run.stderr.strip()[-500:])
    raise OSError("\n".join(errors))


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, or None (no compiler, a failed build, ``IAMNN_KERNELS=0``): callers then
    take the PyTorch path. Compiled once per machine and source version (about a second)."""
    if os.environ.get("IAMNN_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    try:
        lib = ctypes.CDLL(str(_compile(compiler)))
        return _declared(lib)
    except (OSError, subprocess.SubprocessError, AttributeError) as err:  # AttributeError: a function missing
        _note(f"the ACT kernel did not build, using PyTorch ops ({one_line(err)})")
        return None


def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    """``lib`` with its functions' argument and result types set."""
    long, ptr, f32 = ctypes.c_long, ctypes.c_void_p, ctypes.c_float
    unit = ctypes.POINTER(_Unit)
    lib.iamnn_context.argtypes = [unit, long, ptr, long, ptr]
    lib.iamnn_context.restype = ctypes.c_int
    lib.iamnn_act_iteration.argtypes = [unit, long, ptr, ptr, long, ptr, long, f32, f32, ptr, ctypes.c_int]
    lib.iamnn_act_iteration.argtypes += [ptr] * 3
    lib.iamnn_act_iteration.restype = long
    lib.iamnn_weighted_sum.argtypes = [long, long, long, ctypes.POINTER(ptr), ptr, ptr, ptr]
    lib.iamnn_weighted_sum.restype = None
    lib.iamnn_weighted_sum_backward.argtypes = [long, long, long, ptr, ctypes.POINTER(ptr), ptr]
    lib.iamnn_weighted_sum_backward.argtypes += [ctypes.POINTER(ptr), ptr]
    lib.iamnn_weighted_sum_backward.restype = None
    lib.iamnn_pooled_update.argtypes = [long, long, long, ptr, ptr, ptr, ptr, ptr]
    lib.iamnn_pooled_update.restype = None
    lib.iamnn_pooled_update_backward.argtypes = [long, long, long, ptr, ptr, ptr, ptr, ptr, ptr]
    lib.iamnn_pooled_update_backward.restype = ctypes.c_int
    return lib


def _rows(x: Tensor) -> int | None:
    """One sample's map as the kernel reads it: pixels (channels last), −pixels (channels first),
    1 for a (1, C) vector; None for any other layout."""
    if x.ndim == 2:
        return 1 if x.is_contiguous() else None
    pixels = x.shape[2] * x.shape[3]
    if x.is_contiguous(memory_format=torch.channels_last):
        return pixels
    return -pixels if x.is_contiguous() else None


class PackedUnit:
    """A folded halting unit's weights as the kernel's struct: pointers to the unit's own tensors,
    so that the kernel reads them as they are now (a tensor replaced, e.g. by ``.to()``, is
    noticed by :func:`_packed`, which packs again)."""

    def __init__(self, unit: nn.Module, in_channels: int, out_channels: int) -> None:
        self.weights = _weights(unit)  # kept alive while the struct points at them
        if not all(w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous() for w in self.weights):
            raise ValueError("the kernel takes contiguous float32 CPU weights")
        pointers = [w.data_ptr() for w in self.weights]
        self.struct = _Unit(unit.b1.numel(), out_channels, unit.w1u_t.shape[0], in_channels, *pointers)
        self.ref = ctypes.byref(self.struct)
        self.hidden = unit.b1.numel()
        self.pointers = pointers


_UNIT_TENSORS = ("w1s_t", "w1u_t", "w1x_t", "b1", "w2_t", "b2", "w3_t", "b3")


def _weights(unit: nn.Module) -> list[Tensor]:
    """The folded halting unit's tensors, in ``struct iamnn_unit``'s order (read from its buffer
    dict: ``nn.Module.__getattr__`` costs about 0.7 µs a name, and this runs every stage call)."""
    buffers = unit._buffers
    return [buffers[name] for name in _UNIT_TENSORS]


_PACKED: weakref.WeakKeyDictionary[nn.Module, PackedUnit] = weakref.WeakKeyDictionary()


def _packed(stage: nn.Module) -> PackedUnit | None:
    """The stage's halting unit packed for the kernel (kept while the unit lives), or None if it has
    no folded weights (an unfolded :class:`~iamnn.models.halting_unit.HaltingUnit`)."""
    unit = stage._modules["halting_unit"]
    if "w1s_t" not in unit._buffers:
        return None
    packed = _PACKED.get(unit)
    if packed is None or packed.pointers != [w.data_ptr() for w in _weights(unit)]:  # replaced: pack again
        try:
            packed = _PACKED[unit] = PackedUnit(unit, stage.in_channels, stage.out_channels)
        except ValueError:  # weights of another dtype or device
            return None
    return packed


class KernelStep:
    """ACT's halting step for one stage through the kernel: :meth:`context` once, then one call per
    iteration (see ``BatchHalting`` in ``iamnn.py``, which forms y with :func:`weighted_sum`)."""

    def __init__(self, lib: ctypes.CDLL, packed: PackedUnit, threshold: float) -> None:
        self.lib, self.packed, self.threshold = lib, packed, threshold

    def context(self, x0: Tensor) -> Tensor:
        """c = W_1x · GAP(x0) + b_1, (B, hidden)."""
        x0, x_rows = _readable(x0)
        context = x0.new_empty(len(x0), self.packed.hidden)
        if self.lib.iamnn_context(self.packed.ref, len(x0), x0.data_ptr(), x_rows, context.data_ptr()):
            raise MemoryError("iamnn: the ACT kernel could not allocate its buffers")
        return context

    def __call__(
        self, s: Tensor, u: Tensor | None, context: Tensor, cum_h: Tensor, is_last: bool
    ) -> tuple[Tensor, Tensor, Tensor, int]:
        """One iteration: ``(p, halt, next state, how many halt)``, as the PyTorch step's.

        ``u`` None: no halting call (h := 1 at the stage's last iteration, else 0); ``cum_h``
        (Σ_{i<n} h_i) is updated in place and returned.
        """
        s, s_rows = _readable(s)
        u, u_rows = (None, 0) if u is None else _readable(u)
        p, halt = torch.empty_like(cum_h), torch.empty(len(s), dtype=torch.bool)
        n_halt = self.lib.iamnn_act_iteration(
            self.packed.ref, len(s), context.data_ptr(), s.data_ptr(), s_rows, None if u is None else u.data_ptr(),
            u_rows, float(is_last), self.threshold, None, False, cum_h.data_ptr(), p.data_ptr(), halt.data_ptr(),
        )  # fmt: skip
        if n_halt < 0:
            raise MemoryError("iamnn: the ACT kernel could not allocate its buffers")
        return p, halt, cum_h, n_halt


def _readable(x: Tensor) -> tuple[Tensor, int]:
    """``x`` in a layout the kernel reads (it already is, from the folded blocks), and its rows."""
    rows = _rows(x)
    if rows is None:
        x = x.contiguous()
        rows = _rows(x)
    return x, rows


def _applies(x0: Tensor, policy: HaltingPolicy) -> bool:
    """The kernel runs ACT at inference on float32 CPU maps, unless a dispatch mode watches every
    operator (``FlopCounterMode``, as ``iamnn profile`` and the MAC tests use): the kernel's
    arithmetic would be invisible to it."""
    return (
        type(policy) is ACT and x0.device.type == "cpu" and x0.dtype == torch.float32
        and not torch.is_grad_enabled() and _current_dispatch_mode() is None
    )  # fmt: skip


def _kernel_for(stage: nn.Module, x0: Tensor, policy: HaltingPolicy) -> tuple[ctypes.CDLL, PackedUnit] | None:
    """The library and the stage's packed halting unit, where the kernel applies to this call."""
    lib = library() if _applies(x0, policy) else None
    packed = None if lib is None else _packed(stage)
    return None if packed is None else (lib, packed)


def halting_step(stage: nn.Module, x0: Tensor, policy: HaltingPolicy) -> KernelStep | None:
    """The kernel's halting step for ``stage`` under ``policy``, or None where it does not apply
    (another policy, an unfolded halting unit, autograd, not float32 on the CPU, no build, a
    dispatch mode counting operators)."""
    kernel = _kernel_for(stage, x0, policy)
    return None if kernel is None else KernelStep(*kernel, policy.threshold)


class KernelOneSample:
    """:class:`~iamnn.models.iamnn.HostHalting` through the kernel: one C call per iteration scores,
    decides and adds p·s to y. The lean twin of :class:`KernelStep` for a single sample: at batch 1
    every Python line between two iterations' convolutions shows in the latency (measured on 2
    cores with other models run in between, as ``iamnn bench`` does: about 20 µs a line-heavy call)."""

    __slots__ = ("x0", "policy", "iteration", "ref", "threshold", "context", "context_map", "numbers", "halted",
                 "cum_h", "p", "halt", "y", "n")  # fmt: skip

    def __init__(self, lib: ctypes.CDLL, packed: PackedUnit, x0: Tensor, policy: HaltingPolicy) -> None:
        self.x0, self.policy, self.iteration, self.ref = x0, policy, lib.iamnn_act_iteration, packed.ref
        self.threshold = policy.threshold
        self.context_map = x0.new_empty(1, packed.hidden)  # this call's own buffers: threads may share a model
        self.context = self.context_map.data_ptr()
        self.numbers, self.halted = (ctypes.c_float * 2)(0.0, 0.0), ctypes.c_ubyte()  # [Σ_{i<n} h_i, p_n]; halt
        self.cum_h, self.p = ctypes.byref(self.numbers), ctypes.byref(self.numbers, 4)
        self.halt = ctypes.byref(self.halted)
        self.y: Tensor | None = None
        self.n = 0

    def after(self, i: int, s: Tensor, u: Tensor | None, s_seen: Tensor, wants: bool, is_last: bool) -> Tensor | None:
        s, s_rows = _readable(s)  # the folded blocks' maps already are
        if self.y is None:
            self.y = torch.empty_like(s)
        elif self.y.stride() != s.stride():  # y is formed in the layout of the first state
            s = torch.empty_like(self.y).copy_(s)
            s_rows = _rows(s)
        u, u_rows = _readable(u) if wants else (None, 0)
        stop = self.iteration(
            self.ref, 1, self.context, s.data_ptr(), s_rows, u.data_ptr() if wants else None, u_rows, float(is_last),
            self.threshold, self.y.data_ptr(), i == 0, self.cum_h, self.p, self.halt,
        )  # fmt: skip
        if stop < 0:
            raise MemoryError("iamnn: the ACT kernel could not allocate its buffers")
        if stop:
            self.n = i + 1
            return None
        return s

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        rho = self.policy.ponder(np.float32(self.numbers[1]), np.float32(self.n))  # ACT: p_N + N, in float32
        return self.y, torch.full((1,), self.n, dtype=torch.long), torch.full((1,), float(rho))


def one_sample_halting(stage: nn.Module, x0: Tensor, policy: HaltingPolicy) -> KernelOneSample | None:
    """The kernel's decisions for one sample of ``stage`` under ``policy`` (:class:`KernelOneSample`),
    or None where the kernel does not apply (as :func:`halting_step`)."""
    kernel = _kernel_for(stage, x0, policy)
    x_rows = None if kernel is None else _rows(x0)
    if x_rows is None:
        return None
    lib, packed = kernel
    one = KernelOneSample(lib, packed, x0, policy)
    if lib.iamnn_context(packed.ref, 1, x0.data_ptr(), x_rows, one.context):
        return None
    return one


def available() -> bool:
    """Whether the kernel built on this machine (folded models under ACT then use it)."""
    return library() is not None


def _takes(x: Tensor) -> bool:
    """Whether the library may take ``x``: a float32 CPU tensor, no dispatch mode watching every
    operator (its arithmetic would be invisible to it), and the library built."""
    return (
        x.device.type == "cpu" and x.dtype == torch.float32 and _current_dispatch_mode() is None
        and library() is not None
    )  # fmt: skip


def _pointers(tensors: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _sum_in_c(y: Tensor | None, weights: Tensor, maps: list[Tensor], out: Tensor) -> Tensor:
    """out = y + Σ_j weights[j]·maps[j] (y None: from zero) by ``iamnn_weighted_sum``."""
    library().iamnn_weighted_sum(
        len(out), out[0].numel(), len(maps), _pointers(maps), weights.data_ptr(),
        None if y is None else y.data_ptr(), out.data_ptr(),
    )  # fmt: skip
    return out


class _WeightedSum(torch.autograd.Function):
    """y = y_prev + Σ_j p_j·s_j per sample (y_prev None: from zero), forward and backward one kernel
    pass each over the n states (``iamnn_weighted_sum{,_backward}``)."""

    @staticmethod
    def forward(ctx: Any, y: Tensor | None, weights: Tensor, *maps: Tensor) -> Tensor:
        ctx.save_for_backward(weights, *maps)
        ctx.has_y = y is not None
        return _sum_in_c(y, weights, list(maps), torch.empty_like(maps[0]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        weights, *maps = ctx.saved_tensors
        if g.stride() != maps[0].stride():  # the kernel reads g in the states' layout
            g = torch.empty_like(maps[0]).copy_(g)
        grad_maps, grad_weights = [torch.empty_like(m) for m in maps], torch.empty_like(weights)
        library().iamnn_weighted_sum_backward(
            len(g), g[0].numel(), len(maps), g.data_ptr(), _pointers(maps), weights.data_ptr(),
            _pointers(grad_maps), grad_weights.data_ptr(),
        )  # fmt: skip
        return (g if ctx.has_y else None), grad_weights, *grad_maps


def weighted_sum(y: Tensor | None, terms: list[tuple[Tensor, Tensor]]) -> Tensor:
    """y + Σ_j p_j·s_j for the (p, s) pairs ``terms``: (B,) weights and (B, C, H, W) states (y None:
    from zero), differentiable; the stage calls it where samples halt, with the iterations since.

    On float32 CPU maps in one layout it is one C pass over the states and y, forward, and under
    autograd backward (measured on 2 cores, r34, taking turns with adding every iteration's term as
    it comes: inference at batch 64 and 256 0-5 % faster, y bit for bit the same; a training step
    1-1.4 % faster); elsewhere, and when the kernel did not build, ``addcmul`` per state, in place
    at inference.
    """
    weights, maps = [p for p, _ in terms], [s for _, s in terms]
    like = maps[0]
    usable = (
        _takes(like) and _rows(like) is not None
        and all(m.stride() == like.stride() and m.dtype == like.dtype for m in maps)
        and all(p.dtype == like.dtype for p in weights)
    )  # fmt: skip
    if not usable:
        for p, s in terms:  # y = Σ_n p_n · s_n in order
            p_map = p[:, None, None, None]
            if y is None:
                y = p_map * s
            elif torch.is_grad_enabled():
                y = torch.addcmul(y, p_map, s)
            else:  # in place: no fresh buffer for every iteration
                y.addcmul_(p_map, s)
        return y
    if y is not None and y.stride() != like.stride():  # an index (compaction) may have changed y's layout
        y = torch.empty_like(like).copy_(y)
    weights = torch.stack(weights)  # (n, B)
    if torch.is_grad_enabled():
        return _WeightedSum.apply(y, weights, *maps)
    return _sum_in_c(y, weights, maps, torch.empty_like(like) if y is None else y)  # in place: y is the stage's


class _PooledUpdate(torch.autograd.Function):
    """(s, GAP(s), GAP(u)) with s = ReLU(s_prev + u) on channels-last maps, forward and backward one
    kernel pass each (``iamnn_pooled_update`` in ``act_kernel.c``)."""

    @staticmethod
    def forward(ctx: Any, s_prev: Tensor | None, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, channels, height, width = u.shape
        s, s_mean, u_mean = torch.empty_like(u), u.new_empty(batch, channels), u.new_empty(batch, channels)
        library().iamnn_pooled_update(
            batch, height * width, channels, None if s_prev is None else s_prev.data_ptr(), u.data_ptr(),
            s.data_ptr(), s_mean.data_ptr(), u_mean.data_ptr(),
        )  # fmt: skip
        ctx.save_for_backward(s)
        ctx.has_prev = s_prev is not None
        return s, s_mean, u_mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: Any, g: Tensor | None, g_s_mean: Tensor | None, g_u_mean: Tensor | None
    ) -> tuple[Tensor | None, Tensor]:
        (s,) = ctx.saved_tensors
        batch, channels, height, width = s.shape
        g = torch.zeros_like(s) if g is None else g.contiguous(memory_format=torch.channels_last)
        means = [torch.zeros(batch, channels) if m is None else m.contiguous() for m in (g_s_mean, g_u_mean)]
        grad_u = torch.empty_like(s)
        grad_prev = torch.empty_like(s) if ctx.has_prev else None
        if library().iamnn_pooled_update_backward(
            batch, height * width, channels, g.data_ptr(), s.data_ptr(), means[0].data_ptr(), means[1].data_ptr(),
            grad_u.data_ptr(), None if grad_prev is None else grad_prev.data_ptr(),
        ):  # fmt: skip
            raise MemoryError("iamnn: the ACT kernel could not allocate its buffers")
        return grad_prev, grad_u


def pooled_relu_update(s_prev: Tensor | None, u: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """Training: s = ReLU(s_prev + u) (s_prev None: the zero state) with GAP(s) and GAP(u), the
    halting unit's inputs, in one pass forward and one backward; None where the kernel does not
    apply (no build, no autograd, not float32 channels-last CPU maps, a dispatch mode watching).

    Measured on 2 cores, the shipped r34 training step at batch 128 (forward, backward, SGD), three
    rounds taking turns with the PyTorch ops: ``act`` about 3 % faster. The fixed schedules, which
    pool nothing, gained nothing from it and keep the PyTorch ops.
    """
    if (
        not torch.is_grad_enabled() or not _takes(u)
        or u.ndim != 4 or not u.is_contiguous(memory_format=torch.channels_last)
        or (s_prev is not None and (s_prev.dtype != u.dtype or s_prev.stride() != u.stride()))
    ):  # fmt: skip
        return None
    return _PooledUpdate.apply(s_prev, u)
