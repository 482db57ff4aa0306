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

from .models.fold import fold_batchnorm
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
    r"""One stage of a BatchNorm-folded IamNN written for ``torch.export``: under a fixed schedule
    the stage's own loop (``IterativeStage.run``), unrolled at export; under a policy that uses
    halting scores a ``while_loop``, since ``torch.export`` cannot trace the loop's data-dependent
    ``break``.

    The ``while_loop`` body is the same iteration (the block's ``step`` with iteration ``i``'s
    weights picked by a (1,) tensor, the halting unit, the policy's :meth:`HaltingPolicy.step`) for
    ``i >= 1``; the first iteration (``i = 0``, from :math:`s_0 = 0`) runs before it. Carried:
    ``i``, :math:`s`, :math:`y`, the policy's state, the iteration count ``n`` and the
    still-active mask, the last five per sample (B, …). A halted sample keeps computing until the
    whole batch has halted, with its ``y``, ``n`` and state frozen (the batch's compaction, as a mask).
    """

    def __init__(self, stage: IterativeStage, policy: HaltingPolicy) -> None:
        super().__init__()
        if not hasattr(stage.block, "compute"):
            raise TypeError("ExportableStage needs a stage of fold_batchnorm(model)")
        self.stage, self.policy = stage, policy
        self.iterations = policy.limit(stage.max_iterations)

    def forward(
        self, x0: Tensor, policy: HaltingPolicy | None = None, resume: None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C_in, H, W) -> y (B, C_out, H, W), iterations (B,) long, ponder (zeros when adaptive:
        not exported). ``policy`` and ``resume`` are ``IamNN.forward_stages``'s; the policy baked
        in at construction is the one run."""
        policy, block, unit = self.policy, self.stage.block, self.stage.halting_unit
        if not policy.uses_scores:  # a fixed number of iterations, y = last state: unrolled, no Loop
            return self.stage(x0, policy)
        s, u = block.step(x0, None, 0)  # s_0 = 0
        n = torch.ones(x0.shape[0], dtype=torch.long, device=x0.device)
        if self.iterations == 1:
            return s, n, torch.zeros_like(n, dtype=s.dtype)
        # the policy's step after the first iteration
        context = unit.context(x0)  # the halting unit's view of x0, once per stage
        h = unit(s, context, u) if policy.wants_score(0) else torch.zeros_like(n, dtype=s.dtype)
        p, halt, state = policy.step(initial_states(policy, x0), h)
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
            s, u = block.step(x0, s, i)  # u_i = B_k(concat(x0, s_{i-1})), s_i, iteration i's weights
            h = unit(s, context, u)  # also run at the last iteration, where h_{N_k} := 1
            if table is not None:
                h = h * table.index_select(0, i)
            p, halt, next_state = policy.step(state, torch.where(i == last, 1.0, h))
            y = torch.where(active[:, None, None, None], y + p[:, None, None, None] * s, y)
            n = torch.where(active, n + 1, n)
            state = torch.where(active.view(-1, *[1] * (state.ndim - 1)), next_state, state)
            return i + 1, s, y, state, n, active & ~halt

        i1 = torch.ones(1, dtype=torch.long, device=x0.device)
        _, _, y, _, n, _ = while_loop(cond, body, (i1, s, p[:, None, None, None] * s, state, n, ~halt))
        return y, n, torch.zeros_like(n, dtype=y.dtype)


class ExportableIamNN(nn.Module):
    """A BatchNorm-folded IamNN, each adaptive stage one ``while_loop``: (B, C, H, W) -> logits,
    iterations (B, 4). The network's own forward (stem, stages, head) runs, over exportable stages."""

    def __init__(self, model: IamNN, halting: HaltingSpec | None = None) -> None:
        super().__init__()
        self.net = fold_batchnorm(model)
        self.policies = model.policies(halting)
        stages = zip(self.net.stages, self.policies, strict=True)
        self.net.stages = nn.ModuleList(ExportableStage(s, p) for s, p in stages)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features, iterations, _, _ = self.net.forward_stages(self.net.forward_stem(x), self.policies)
        return self.net.forward_head(features), iterations


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
