r"""ACT at batch 1 in one C call per iteration: the halting machinery without operator dispatch.

At batch 1 an iteration's convolutions take 50–150 µs, and the halting step after it is about
fifteen tiny operator calls (pooling of s and u, three small matrix products, ReLUs, a sigmoid,
ACT's rule, ``y += p·s``) that cost more in dispatch than in arithmetic: measured on 2 cores, the
shipped model spent 1.45–1.55x the time of "no-halt" (the same iterations with no halting). Here
:func:`act_one_sample` runs that step as one call into ``act_kernel.c`` (compiled on first use with
the system's C compiler, cached under ``~/.cache/iamnn/kernels``), for a BatchNorm-folded model
(``fold.py``) under the paper's policy, :class:`~iamnn.models.halting.ACT`.

It is an optimisation, never a requirement: with no C compiler, on another device or dtype, for
another policy, or with ``IAMNN_KERNELS=0`` in the environment, the stage takes its PyTorch path;
tests check that both give the same iterations, output and ponder cost.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from torch import Tensor, nn

from .halting import ACT, HaltingPolicy

SOURCE = Path(__file__).with_name("act_kernel.c")
FLAGS = (("-O3", "-march=native"), ("-O3",))  # -march=native: this CPU's vector units; the second if it fails


class _Unit(ctypes.Structure):
    """``struct iamnn_unit`` of act_kernel.c."""

    _fields_ = [(name, ctypes.c_long) for name in ("hidden", "s_channels", "u_channels", "x_channels")]
    _fields_ += [(name, ctypes.c_void_p) for name in ("w1s_t", "w1u_t", "w1x_t", "b1", "w2_t", "b2", "w3")]
    _fields_ += [("b3", ctypes.c_float)]


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


def _compile(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    errors = []
    for flags in FLAGS:
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), *map(str.encode, flags), _cpu_id()])).hexdigest()
        path = cache_dir() / f"act_kernel-{key[:16]}.so"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=300):  # two processes compiling at once: one does
            if path.exists():
                return path
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            run = subprocess.run(
                [compiler, *flags, "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-lm"],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if run.returncode == 0:
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
    except (OSError, subprocess.SubprocessError) as err:
        warnings.warn(f"iamnn: the batch-1 ACT kernel did not build, using PyTorch ({err})", stacklevel=2)
        return None
    long, ptr, f32 = ctypes.c_long, ctypes.c_void_p, ctypes.c_float
    unit = ctypes.POINTER(_Unit)
    lib.iamnn_context.argtypes = [unit, ptr, long, ptr]
    lib.iamnn_context.restype = ctypes.c_int
    lib.iamnn_act_iteration.argtypes = [unit, ptr, ptr, long, ptr, long, f32, f32, ptr, long, ctypes.c_int, ptr]
    lib.iamnn_act_iteration.restype = ctypes.c_int
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
    """A folded halting unit's weights as the kernel's struct (the tensors are the unit's own)."""

    def __init__(self, unit: nn.Module, in_channels: int, out_channels: int) -> None:
        self.weights = [unit.w1s_t, unit.w1u_t, unit.w1x_t, unit.b1, unit.w2_t, unit.b2, unit.w3_t]
        if not all(w.dtype == torch.float32 and w.device.type == "cpu" and w.is_contiguous() for w in self.weights):
            raise ValueError("the kernel takes contiguous float32 CPU weights")
        pointers = [w.data_ptr() for w in self.weights]
        self.struct = _Unit(unit.b1.numel(), out_channels, unit.w1u_t.shape[0], in_channels, *pointers,
                            float(unit.b3))  # fmt: skip
        self.ref = ctypes.byref(self.struct)
        self.hidden = unit.b1.numel()
        self.pointers = pointers


_PACKED: weakref.WeakKeyDictionary[nn.Module, PackedUnit] = weakref.WeakKeyDictionary()


def _packed(stage: nn.Module) -> PackedUnit | None:
    """The stage's halting unit packed for the kernel (kept while the unit lives), or None if it has
    no folded weights (an unfolded :class:`~iamnn.models.halting_unit.HaltingUnit`)."""
    unit = stage.halting_unit
    if not hasattr(unit, "w1s_t"):
        return None
    packed = _PACKED.get(unit)
    if packed is None or packed.pointers != [w.data_ptr() for w in packed.weights]:  # weights moved: repack
        packed = _PACKED[unit] = PackedUnit(unit, stage.in_channels, stage.out_channels)
    return packed


def act_one_sample(stage: nn.Module, x0: Tensor, policy: HaltingPolicy) -> tuple[Tensor, Tensor, Tensor] | None:
    """``IterativeStage._one_sample`` for ACT through the kernel: (y, N, ρ), or None when the kernel
    does not apply (then the caller's PyTorch path runs)."""
    if type(policy) is not ACT or x0.device.type != "cpu" or x0.dtype != torch.float32:
        return None
    lib, packed = library(), _packed(stage)
    x_rows = _rows(x0)
    if lib is None or packed is None or x_rows is None:
        return None
    context = x0.new_empty(packed.hidden)
    if lib.iamnn_context(packed.ref, x0.data_ptr(), x_rows, context.data_ptr()):
        return None
    state = (ctypes.c_float * 2)(0.0, 0.0)  # [Σ_{i<n} h_i, p_n], as ACT.step's state and weight
    context_ptr, threshold = context.data_ptr(), policy.threshold
    limit = policy.limit(stage.max_iterations)
    s: Tensor | None = None
    y: Tensor | None = None
    for i in range(limit):
        is_last = i == limit - 1
        wants = not is_last and policy.wants_score(i)
        s, u = stage.block.step(x0, s, i, need_u=wants)
        s_rows, u_rows = _rows(s), (_rows(u) if wants else 0)
        if y is None:
            y = torch.empty_like(s)
        if s_rows is None or u_rows is None or y.stride() != s.stride():
            return None  # a layout the kernel does not read (never seen from the folded blocks)
        halt = lib.iamnn_act_iteration(
            packed.ref, context_ptr, s.data_ptr(), s_rows, u.data_ptr() if wants else None, u_rows,
            float(is_last), threshold, y.data_ptr(), s.numel(), i == 0, state,
        )  # fmt: skip
        if halt < 0:
            return None
        if halt:
            rho = float(policy.ponder(np.float32(state[1]), np.float32(i + 1)))
            return y, torch.tensor([i + 1]), torch.tensor([rho], dtype=x0.dtype)
    raise AssertionError("unreachable: the last iteration always halts")


def available() -> bool:
    """Whether the kernel built on this machine (batch-1 ACT inference of folded models uses it)."""
    return library() is not None
