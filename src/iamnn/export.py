r"""ONNX export of an IamNN with the halting decision inside the graph, and an onnxruntime wrapper.

In ``act`` mode each stage's iterations become one ONNX ``Loop`` whose condition is
data-dependent, so onnxruntime skips the iterations a sample does not need (measured in
``docs/onnx.md``). A fixed number of iterations (``full`` or an int k) is unrolled instead, with
each iteration's weights as constants that onnxruntime can pre-pack (r34 at width 1/8, batch 1:
``full`` in 0.25 ms against 0.44 ms as a ``Loop``). The
route: :func:`~iamnn.models.fold.fold_batchnorm` gives per-iteration convolution weights stacked
as ``(N_k, ...)`` buffers; :class:`_ExportableIamNN` runs each stage with
``torch._higher_order_ops.while_loop`` and picks iteration ``i``'s weights with
``index_select(·, 0, i)``; ``torch.onnx.export(dynamo=True)`` turns the ``while_loop`` into a
``Loop``. A Python ``if …: break`` on a tensor cannot be traced by ``torch.export``.

The batch dimension is dynamic. One ``Loop`` serves the whole batch: it runs until the last
sample of the batch halts, and a halted sample is masked (its output ``y`` and its counters are
frozen), so results equal the per-sample ones but a batch costs as much as its slowest sample.
For early exit to save time, run batch 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .models.fold import FoldedProcessingBlock, fold_batchnorm
from .models.iamnn import IamNN, IterativeStage
from .weights import CONFIG_KEY

_MISSING = "ONNX export needs the optional extra: pip install 'iamnn[export]'"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "iterations")


def _require(module: str) -> Any:
    """Import an optional dependency of the ``export`` extra, or fail with the install line."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(_MISSING) from None


class _ExportableStage(nn.Module):
    r"""One stage of a BatchNorm-folded IamNN written for ``torch.export``: a ``while_loop`` in
    ``act`` mode, unrolled for a fixed number of iterations.

    The first iteration (``i = 0``, from :math:`s_0 = 0`, with ``w1_first``) runs before the loop;
    the loop body is iteration ``i >= 1`` (0-based). Carried: ``i``, :math:`s`, :math:`y`,
    :math:`\sum_{j<i} h_j`, the iteration count ``n`` and the still-active mask, the last five per
    sample (B, …). A halted sample keeps computing until the whole batch has halted, with its
    ``y``, ``n`` and :math:`\sum h` frozen.
    """

    def __init__(self, stage: IterativeStage, halting: str | int, epsilon: float) -> None:
        super().__init__()
        block = stage.block
        if not isinstance(block, FoldedProcessingBlock):
            raise TypeError("_ExportableStage needs a stage of fold_batchnorm(model)")
        self.block, self.halting = block, stage.halting
        self.max_iterations = stage.max_iterations
        self.act = halting == "act"
        if halting in ("act", "full"):
            self.iterations = self.max_iterations
        else:
            self.iterations = max(1, min(int(halting), self.max_iterations))
        self.threshold = 1.0 - epsilon

    def _block(self, x: Tensor, i: Tensor | int, first: bool = False) -> Tensor:
        """u = B_k(x) with iteration ``i``'s folded weights; ``i`` a (1,) long tensor inside a
        loop, or an int where the iteration is known at export (its weights are then constants)."""
        b = self.block

        def pick(stacked: Tensor) -> Tensor:
            return stacked[i] if isinstance(i, int) else stacked.index_select(0, i)[0]

        u = F.conv2d(x, pick(b.w1_first if first else b.w1), pick(b.b1))
        u = F.conv2d(torch.relu(u), pick(b.w2), pick(b.b2), padding=1)
        return F.conv2d(torch.relu(u), pick(b.w3), pick(b.b3))

    def forward(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C_in, H, W) -> y (B, C_out, H, W), iterations (B,) long."""
        from torch._higher_order_ops import while_loop

        batch = x0.shape[0]
        u = self._block(x0, 0, first=True)
        s = torch.relu(u)  # s_1 = ReLU(u_1) since s_0 = 0
        n = torch.ones(batch, dtype=torch.long, device=x0.device)
        if not self.act:  # a fixed number of iterations, y = last state: unrolled, no Loop
            for i in range(1, self.iterations):
                s = torch.relu(s + self._block(torch.cat([x0, s], 1), i))
            return s, torch.full_like(n, self.iterations)
        if self.iterations == 1:
            return s, n
        i1 = torch.ones(1, dtype=torch.long, device=x0.device)

        # ACT step of the first iteration: p_1 = h_1 unless h_1 ≥ 1 − ε, then p_1 = R = 1
        context = self.halting.context(x0)  # the halting unit's view of x0, once per stage
        h = self.halting(s, context, u)
        halt = h >= self.threshold
        p = torch.where(halt, torch.ones_like(h), h)
        y = p[:, None, None, None] * s
        active = ~halt
        last = self.max_iterations - 1

        def cond(i: Tensor, s: Tensor, y: Tensor, cum_h: Tensor, n: Tensor, active: Tensor) -> Tensor:
            return active.any()

        def body(
            i: Tensor, s: Tensor, y: Tensor, cum_h: Tensor, n: Tensor, active: Tensor
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
            u = self._block(torch.cat([x0, s], 1), i)
            s = torch.relu(s + u)  # s_i = ReLU(s_{i-1} + u_i)
            h = self.halting(s, context, u)  # also run at the forced last iteration, where it is unused
            # halt at N = min{n : Σ_{j≤n} h_j ≥ 1 − ε}, or at the forced last iteration N_k
            halt = (cum_h + h >= self.threshold) | (i == last)
            p = torch.where(halt, 1.0 - cum_h, h)  # p_n = h_n, p_N = R = 1 − Σ_{j<N} h_j
            y = torch.where(active[:, None, None, None], y + p[:, None, None, None] * s, y)
            n = torch.where(active, n + 1, n)
            cum_h = torch.where(active, cum_h + h, cum_h)
            return i + 1, s, y, cum_h, n, active & ~halt

        _, _, y, _, n, _ = while_loop(cond, body, (i1, s, y, h, n, active))
        return y, n


class _ExportableIamNN(nn.Module):
    """A BatchNorm-folded IamNN, each ACT stage one ``while_loop``: (B, C, H, W) -> logits, iterations (B, 4)."""

    def __init__(self, model: IamNN) -> None:
        super().__init__()
        folded = fold_batchnorm(model)
        self.conv1, self.maxpool, self.pool, self.fc = folded.conv1, folded.maxpool, folded.pool, folded.fc
        self.stages = nn.ModuleList(_ExportableStage(s, model.halting, model.epsilon) for s in folded.stages)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(torch.relu(self.conv1(x)))
        iterations = []
        for k, stage in enumerate(self.stages):
            if k > 0:
                x = self.pool(x)
            x, n = stage(x)
            iterations.append(n)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return logits, torch.stack(iterations, 1)


def _default_input_size(model: IamNN, config: dict[str, Any] | None) -> tuple[int, int]:
    data = (config or {}).get("data") or {}
    if "input_size" in data:
        return tuple(int(v) for v in data["input_size"][-2:])  # type: ignore[return-value]
    return (32, 32) if model.stem_type == "cifar" else (224, 224)


def export_onnx(
    model: IamNN,
    path: str | Path,
    input_size: tuple[int, int] | None = None,
    opset: int | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Export an IamNN to ONNX with each stage's halting loop as an ONNX ``Loop`` (``act``; fixed
    modes are unrolled).

    Args:
        model: the IamNN; exported in its ``halting`` mode (``"act"``, ``"full"`` or an int k),
            from a BatchNorm-folded copy (``model`` itself is not changed).
        path: the ``.onnx`` file to write (one file, weights included).
        input_size: (H, W) the graph is fixed to; default: ``config["data"]["input_size"]``, else
            32x32 (cifar stem) or 224x224 (imagenet stem). The batch dimension stays dynamic.
        opset: ONNX opset (default: the exporter's).
        config: JSON-able dict stored in the file's ``metadata_props`` under ``"iamnn_config"``
            (e.g. ``iamnn.weights.read_config(...)``, with ``"data"`` for preprocessing); default:
            the config ``create_model`` recorded on ``model``, if any.

    Outputs of the graph: ``logits`` (B, classes) float and ``iterations`` (B, 4) int64. With
    batch > 1 each stage loops until the batch's last sample halts, halted samples masked.
    """
    _require("onnx")
    _require("onnxscript")
    if not isinstance(model, IamNN):
        raise TypeError(f"export_onnx exports an IamNN, got {type(model).__name__}")
    path = Path(path)
    if config is None:
        config = getattr(model, "model_config", None)
    h, w = input_size or _default_input_size(model, config)
    module = _ExportableIamNN(model).eval().cpu()
    example = torch.zeros(2, model.in_chans, h, w)  # batch 2: a batch of 1 would be specialised
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        opset_version=opset,
        dynamic_shapes={"x": {0: batch}},
        verbose=False,
    )
    # the exporter can leave an unused constant behind (onnxruntime warns about it at load)
    _require("onnx_ir").passes.common.RemoveUnusedNodesPass()(program.model)
    if config is not None:
        program.model.metadata_props[CONFIG_KEY] = json.dumps(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(path)
    return path


class OnnxModel:
    """An exported IamNN run by onnxruntime on the CPU: ``model(x) -> (logits, iterations)``.

    Args:
        path: the ``.onnx`` file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @property
    def config(self) -> dict[str, Any] | None:
        """The ``"iamnn_config"`` dict stored at export (model, kwargs, and ``"data"`` if given)."""
        meta = self.session.get_modelmeta().custom_metadata_map
        return json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None

    def __call__(self, x: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B, C, H, W) or (C, H, W) images -> logits (B, classes), iterations (B, 4) int64."""
        if isinstance(x, Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        logits, iterations = self.session.run(list(OUTPUT_NAMES), {self.input_name: x})
        return logits, iterations
