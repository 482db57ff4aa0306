r"""ONNX export of an IamNN with the halting decision inside the graph, and an onnxruntime wrapper.

In ``act`` mode each stage's iterations become one ONNX ``Loop`` whose condition is
data-dependent, so onnxruntime skips the iterations a sample does not need (measured in
``docs/onnx.md``). A fixed number of iterations (``full`` or an int k) is unrolled instead, with
each iteration's weights as constants that onnxruntime can pre-pack (r34 at width 1/8, batch 1:
``full`` in 0.25 ms against 0.44 ms as a ``Loop``). The
route: :func:`~iamnn.models.fold.fold_batchnorm` gives per-iteration convolution weights stacked
as ``(N_k, ...)`` buffers; :class:`ExportableIamNN` runs each stage with
``torch._higher_order_ops.while_loop`` and picks iteration ``i``'s weights with
``index_select(·, 0, i)``; ``torch.onnx.export(dynamo=True)`` turns the ``while_loop`` into a
``Loop``. A Python ``if …: break`` on a tensor cannot be traced by ``torch.export``.

The batch dimension is dynamic. One ``Loop`` serves the whole batch: it runs until the last
sample of the batch halts, and a halted sample is masked (its output ``y`` and its counters are
frozen), so results equal the per-sample ones but a batch costs as much as its slowest sample.
For early exit to save time, run batch 1.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch._higher_order_ops import while_loop
from torch.nn import functional as F

from .models.fold import FoldedInvertedResidualBlock, FoldedProcessingBlock, fold_batchnorm
from .models.halting import HaltingPolicy, HaltingSpec, halting_json, initial_states, network_policy
from .models.iamnn import IamNN, IterativeStage
from .weights import CONFIG_KEY

_MISSING = "ONNX export needs the optional extra: pip install 'iamnn[export]'"
INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "iterations")


def _require(module: str) -> Any:
    """Import an optional dependency of the ``export`` extra, or fail with the install line."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(_MISSING) from None


class ExportableStage(nn.Module):
    r"""One stage of a BatchNorm-folded IamNN written for ``torch.export``: a ``while_loop`` under a
    policy that uses halting scores, unrolled under a fixed schedule.

    The first iteration (``i = 0``, from :math:`s_0 = 0`, with ``w1_first``) runs before the loop;
    the loop body is iteration ``i >= 1`` (0-based). Carried: ``i``, :math:`s`, :math:`y`, the
    policy's state, the iteration count ``n`` and the still-active mask, the last five per sample
    (B, …). A halted sample keeps computing until the whole batch has halted, with its ``y``, ``n``
    and state frozen. Each iteration's decision is the policy's own :meth:`HaltingPolicy.step`.
    """

    def __init__(self, stage: IterativeStage, policy: HaltingPolicy) -> None:
        super().__init__()
        block = stage.block
        if not isinstance(block, FoldedProcessingBlock | FoldedInvertedResidualBlock):
            raise TypeError("ExportableStage needs a stage of fold_batchnorm(model)")
        self.block, self.halting_unit, self.policy = block, stage.halting_unit, policy
        self.iterations = policy.limit(stage.max_iterations)

    def _block(self, x: Tensor, i: Tensor | int, first: bool = False) -> Tensor:
        """u = B_k(x) with iteration ``i``'s folded weights; ``i`` a (1,) long tensor inside a
        loop, or an int where the iteration is known at export (its weights are then constants)."""

        def pick(stacked: Tensor) -> Tensor:
            return stacked[i] if isinstance(i, int) else stacked.index_select(0, i)[0]

        return self.block.compute(x, pick, first)

    def forward(self, x0: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C_in, H, W) -> y (B, C_out, H, W), iterations (B,) long."""
        batch, policy = x0.shape[0], self.policy
        u = self._block(x0, 0, first=True)
        update = self.block.update  # s_i from s_{i-1} and u_i: the block's residual rule
        s = update(None, u)  # s_0 = 0
        n = torch.ones(batch, dtype=torch.long, device=x0.device)
        if not policy.uses_scores:  # a fixed number of iterations, y = last state: unrolled, no Loop
            for i in range(1, self.iterations):
                s = update(s, self._block(torch.cat([x0, s], 1), i))
            return s, torch.full_like(n, self.iterations)
        if self.iterations == 1:
            return s, n
        i1 = torch.ones(1, dtype=torch.long, device=x0.device)

        # the policy's step after the first iteration
        context = self.halting_unit.context(x0)  # the halting unit's view of x0, once per stage
        h = self.halting_unit(s, context, u) if policy.wants_score(0) else torch.zeros_like(n, dtype=s.dtype)
        p, halt, state = policy.step(initial_states(policy, x0), h)
        y = p[:, None, None, None] * s
        active = ~halt
        last = self.iterations - 1
        # where the policy wants no score (e.g. ACT's min_iterations) the step gets 0: a 0/1 table
        # indexed by i, in the graph only if some iteration is unscored
        scored = [float(policy.wants_score(j)) for j in range(self.iterations)]
        table = None if min(scored[1:last] or [1.0]) else torch.tensor(scored, device=x0.device)

        def cond(i: Tensor, s: Tensor, y: Tensor, state: Tensor, n: Tensor, active: Tensor) -> Tensor:
            return active.any()

        def body(
            i: Tensor, s: Tensor, y: Tensor, state: Tensor, n: Tensor, active: Tensor
        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
            u = self._block(torch.cat([x0, s], 1), i)
            s = update(s, u)
            h = self.halting_unit(s, context, u)  # also run at the last iteration, where h_{N_k} := 1
            if table is not None:
                h = h * table.index_select(0, i)
            p, halt, next_state = policy.step(state, torch.where(i == last, 1.0, h))
            y = torch.where(active[:, None, None, None], y + p[:, None, None, None] * s, y)
            n = torch.where(active, n + 1, n)
            state = torch.where(active.view(-1, *[1] * (state.ndim - 1)), next_state, state)
            return i + 1, s, y, state, n, active & ~halt

        _, _, y, _, n, _ = while_loop(cond, body, (i1, s, y, state, n, active))
        return y, n


class ExportableIamNN(nn.Module):
    """A BatchNorm-folded IamNN, each adaptive stage one ``while_loop``: (B, C, H, W) -> logits, iterations (B, 4)."""

    def __init__(self, model: IamNN, halting: HaltingSpec | None = None) -> None:
        super().__init__()
        folded = fold_batchnorm(model)
        self.conv1, self.maxpool, self.pool, self.fc = folded.conv1, folded.maxpool, folded.pool, folded.fc
        policies = model.policies(halting)
        self.stages = nn.ModuleList(ExportableStage(s, p) for s, p in zip(folded.stages, policies, strict=True))

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


CASCADE_NOT_EXPORTED = (
    "a cascade is not exported: ONNX's If takes one branch for a whole batch, while a cascade sends each "
    "image its own way; export its passes (--halting 1) and compare the confidence in your runtime"
)


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
    halting: HaltingSpec | None = None,
) -> Path:
    """Export an IamNN to ONNX with each stage's halting loop as an ONNX ``Loop`` (``act``; fixed
    modes are unrolled).

    Args:
        model: the IamNN, exported from a BatchNorm-folded copy (``model`` itself is not changed).
        path: the ``.onnx`` file to write (one file, weights included).
        input_size: (H, W) the graph is fixed to; default: ``config["data"]["input_size"]``, else
            32x32 (cifar stem) or 224x224 (imagenet stem). The batch dimension stays dynamic.
        opset: ONNX opset (default: the exporter's).
        config: JSON-able dict stored in the file's ``metadata_props`` under ``"iamnn_config"``
            (e.g. ``iamnn.weights.read_config(...)``, with ``"data"`` for preprocessing); default:
            the config ``create_model`` recorded on ``model``, if any, with ``halting`` as exported.
        halting: the halting policy baked into the graph (default: the model's ``halting``).

    Outputs of the graph: ``logits`` (B, classes) float and ``iterations`` (B, 4) int64. With
    batch > 1 each stage loops until the batch's last sample halts, halted samples masked.
    """
    _require("onnx")
    _require("onnxscript")
    if not isinstance(model, IamNN):
        raise TypeError(f"export_onnx exports an IamNN, got {type(model).__name__}")
    if network_policy(model.halting if halting is None else halting) is not None:
        raise ValueError(CASCADE_NOT_EXPORTED)
    path = Path(path)
    if config is None:
        config = getattr(model, "model_config", None)
        if config is not None and halting is not None:  # the policy baked in, not the model's default
            config = {**config, "kwargs": {**config["kwargs"], "halting": halting_json(halting)}}
    h, w = input_size or _default_input_size(model, config)
    module = ExportableIamNN(model, halting).eval().cpu()
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
