"""The commands that use a trained model: ``predict``, ``app`` and ``export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from ..errors import CLIError, one_line
from ..files import atomic_path
from . import SHIPPED
from .shared import console, human, load, note_other_regime, output_file, printable, show, shown, source_text


def predict(args: argparse.Namespace) -> None:
    from ..prediction import onnx_runner, predict_files, torch_runner

    if args.onnx:
        try:
            run, config = onnx_runner(args.onnx)
        except (ImportError, ValueError) as err:
            raise CLIError(str(err)) from None
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for unreadable files
            raise CLIError(f"{args.onnx}: cannot load ONNX model ({str(err).splitlines()[0][:200]})") from None
        source, data = f"{args.onnx} (ONNX)", config.get("data")
    else:
        loaded = load(args)  # the shipped model unless given other weights, as iamnn.predict and the app
        if args.halting is not None:
            note_other_regime("predict", loaded.model, args.halting,
                              "predict with the weights of `iamnn recalibrate ... --halting H -o FILE`")  # fmt: skip
        run, source, data = torch_runner(loaded.model, args.halting), source_text(loaded, args.weights), loaded.data
    if not data:
        raise CLIError("the weights carry no preprocessing config (input size, mean, std)")
    results, bad = predict_files(run, data, args.images)

    def table() -> None:
        out = Table(caption=f"weights: {shown(source)}")
        cascade = any(r.answered_by is not None for r in results)
        columns = ("image", "class", "confidence", "iterations per stage", "MACs") + (("answered by pass",) * cascade)
        for col in columns:
            out.add_column(col, justify="left" if col in ("image", "class") else "right")
        for r in results:
            out.add_row(shown(r.path), shown(r.label), f"{r.confidence:.3f}", " / ".join(map(str, r.iterations)),
                        human(r.macs), *((str(r.answered_by + 1),) if cascade else ()))  # fmt: skip
        if results:
            console().print(out)

    show({"weights": source, "predictions": [vars(r) for r in results], "errors": [list(b) for b in bad]},
         args.json, table)  # fmt: skip
    for path, reason in bad:
        print(f"iamnn predict: skipped {printable(path)}: {printable(reason)}", file=sys.stderr)
    if bad or not results:
        sys.exit(1)


def app(args: argparse.Namespace) -> None:
    from importlib.util import find_spec

    if find_spec("gradio") is None:  # now, not after the minutes of start-up (app.py imports it when serving)
        raise CLIError("the app needs the optional extra: pip install 'iamnn[app]' (no module named 'gradio')")
    what = printable(args.weights or f"the shipped {args.model or SHIPPED}")
    curve = (f"; it first measures its accuracy curve on {args.test_images} test images, about a minute per 1000 "
             "on 2 CPU cores (--test-images 0 skips it)") if args.test_images else " (a few seconds)"  # fmt: skip
    print(f"iamnn app: starting the explorer of {what}{curve}", flush=True)
    try:
        from ..app import Explorer, serve
    except ImportError as err:
        raise CLIError(f"the app needs the optional extra: pip install 'iamnn[app]' ({one_line(err)})") from None
    loaded = load(args)  # the app shows the shipped model unless given other weights
    try:
        explorer = Explorer(loaded.model, test_images=args.test_images)
    except ValueError as err:
        raise CLIError(str(err)) from None
    try:
        serve(explorer, host=args.host, port=args.port)
    except OSError as err:  # e.g. the port is taken
        raise CLIError(one_line(err).split(". You can")[0]) from None


def export(args: argparse.Namespace) -> None:
    from ..export import CASCADE_NOT_EXPORTED
    from ..models.halting import halting_json, network_policy
    from ..weights import save_weights

    loaded = load(args)
    model = loaded.model
    out = output_file(args.output, args.force, (".json",) if args.format == "safetensors" else ())
    if args.format == "safetensors":
        save_weights(model, out, data=loaded.data)
        print(f"wrote {out} and {out.with_suffix('.json')}")
        return
    from .. import progress
    from ..export import export_onnx

    halting = halting_json(model.halting if args.halting is None else args.halting)
    if network_policy(halting) is not None:
        raise CLIError(CASCADE_NOT_EXPORTED)
    # what `iamnn bench --onnx FILE` reloads the PyTorch model from (bench.onnx_source)
    source = {"pretrained": loaded.shipped} if loaded.shipped else {"weights": str(Path(args.weights).resolve())}
    config = {**loaded.config, "kwargs": {**loaded.config.get("kwargs", {}), "halting": halting}, "source": source}
    try:  # a kill mid-export leaves no partial file under the output's name
        with progress.status(f"exporting {out} (torch.export traces every stage: 10-30 s)"), atomic_path(out) as tmp:
            export_onnx(model, tmp, config=config, halting=halting)
    except ImportError as err:
        raise CLIError(str(err)) from None
    adaptive = [p.uses_scores for p in model.policies(halting)]
    how = ("an ONNX Loop with early exit" if all(adaptive) else "unrolled (a fixed number)" if not any(adaptive)
           else "an ONNX Loop with early exit where the stage halts adaptively, else unrolled")  # fmt: skip
    print(f"wrote {out} (halting {halting!r}; each stage's iterations are {how})")
    note_other_regime("export", model, args.halting,
                      "export the weights of `iamnn recalibrate ... --halting H -o FILE` instead")  # fmt: skip
