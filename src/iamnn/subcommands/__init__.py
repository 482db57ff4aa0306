"""The ``iamnn`` commands as data: what each is for, its options, its examples and its handler.

``cli.build_parser`` turns :data:`COMMANDS` into argparse subcommands, adding the option groups a
command names (model source, ``--halting``, ``--json``, ``--test-subset``) from one declaration
each (``cli.py``). A handler, ``"module:function"`` of this package, is imported when its command
runs, so that ``iamnn --help`` or a mistyped flag loads neither PyTorch nor Lightning. This module
and :mod:`.types` import nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from . import types

# weights.DEFAULT_MODEL, named here for the help texts without importing PyTorch (a test checks they agree)
SHIPPED = "iamnn_r34_fmnist"
LIGHTNING_COMMANDS = ("fit", "validate", "test")

Argument = tuple[tuple[str, ...], dict[str, Any]]


def arg(*flags: str, **options: Any) -> Argument:
    """One ``add_argument`` call, as data."""
    return flags, options


@dataclass(frozen=True)
class Halting:
    """A command's ``--halting``: what it means there, and which values it takes."""

    help: str
    required: bool = False
    type: Any = types.halting  # or types.cascade


@dataclass(frozen=True)
class Command:
    """One ``iamnn`` command: its one-line summary, handler, own arguments, and the option groups it takes."""

    summary: str
    handler: str  # "module:function" in this package
    arguments: tuple[Argument, ...] = ()
    #: the model source options (--weights FILE | --pretrained [--model NAME]): "required"; "run"
    #: (--ckpt RUN too); "shipped" (default: the shipped model); "untrained" (default: --model untrained)
    source: Literal["required", "run", "shipped", "untrained"] | None = None
    halting: Halting | None = None
    json: str | None = None  # "" or an example PATH: the command takes --json [FILE.json]
    test_subset: bool = False
    examples: tuple[str, ...] = ()
    epilog: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


REGIME = "a halting policy instead of the model's own: act, full, pondernet, k, or cascade:1,flip-1@0.72"
OUTPUT_FORCE = arg("--force", action="store_true", help="overwrite an existing output file")
RUNS = "run directories written by `iamnn fit` (runs/<name>)"

# The end of each command's --help: a line or two to copy (comments aligned, as in the README)
LIGHTNING_EXAMPLES: dict[str, tuple[str, ...]] = {
    "fit": (
        "iamnn fit --config recipes/digits/iamnn_r18.yaml                 # a smoke run: seconds, on digits",
        "iamnn fit --config recipes/fashion_mnist/iamnn_r18.yaml --trainer.max_epochs 30 --name r18_30ep",
        "iamnn fit --config recipes/fashion_mnist/iamnn_r18.yaml --ckpt_path last   # resume after a crash or kill",
    ),
    "validate": (
        "iamnn validate --config runs/digits_iamnn_r18/config.yaml "
        "--ckpt_path runs/digits_iamnn_r18/checkpoints/last.ckpt",
    ),
    "test": (
        "iamnn test --config runs/digits_iamnn_r18/config.yaml --ckpt_path runs/digits_iamnn_r18/checkpoints/last.ckpt"
        "   # logs to runs/digits_iamnn_r18/test/",
    ),
}

COMMANDS: dict[str, Command] = {
    "models": Command(
        "the registered models: kind, parameters, iterations, shipped weights", "info:models",
        (arg("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'iamnn_*' (default: all)"),),
        json="", examples=("iamnn models 'iamnn_*'", "iamnn models --json"),
    ),
    "profile": Command(
        "params and MACs of every Table-1 model, ours beside the paper's", "info:profile",
        (arg("--width", type=types.width, default=1.0, help="width multiplier of the IamNN rows (default 1)"),),
        json="", examples=("iamnn profile", "iamnn profile --width 0.25 --json"),
    ),
    "evaluate": Command(
        "trained weights on their dataset's test set: the README's Table-1 row", "results:evaluate",
        (arg("--recalibrate", action="store_true",
             help="first re-estimate the BatchNorm statistics for that halting policy on training images"),),
        source="required", halting=Halting(REGIME), json="", test_subset=True,
        examples=("iamnn evaluate --pretrained                              # the shipped model's Table-1 row",
                  "iamnn evaluate --weights runs/demo/model.safetensors --halting 2 --recalibrate"),
    ),
    "report": Command(
        "Table-1-style table and figures for trained runs", "results:report",
        (arg("runs", nargs="+", help=RUNS),
         arg("-o", "--output", default="report", help="output folder (default: report)"),
         arg("--no-sweep", action="store_true", help="skip the accuracy-vs-MACs sweep of halting policies"),
         arg("--quick-sweep", action="store_true", help="8 sweep points instead of ~20")),
        json="", test_subset=True,
        examples=("iamnn report runs/fmnist_iamnn_r18 runs/fmnist_resnet18 -o report/fmnist",
                  "iamnn report runs/demo --quick-sweep --test-subset 1000   # a quicker look"),
    ),
    "frontier": Command(
        "accuracy vs average MACs of trained runs: Pareto plot, table, JSON", "results:frontier",
        (arg("runs", nargs="+", help="run folders written by `iamnn fit`, or folders of them (runs/frontier)"),
         arg("-o", "--output", default="report/frontier", help="output folder (default: report/frontier)"),
         arg("--budgets", type=types.count(0, 100), default=6, metavar="N",
             help="calibrate each adaptive run (halting units on a frozen anytime backbone) to N average-MACs "
             "budgets from its k = 1 to its full cost, each a point of its curve (default 6; 0: as trained only)")),
        json="benchmarks/results/frontier.json", test_subset=True,
        examples=("iamnn frontier runs/frontier -o report/frontier",
                  "iamnn frontier runs/frontier --budgets 0 --json"),
    ),
    "calibrate": Command(
        "choose the halting threshold that meets an average-MACs budget", "results:calibrate",
        (arg("--ckpt", required=True, help="a run directory, or a weights/checkpoint file inside one"),
         arg("--budget-macs", required=True, nargs="+", help="average MACs per image, e.g. 20M 1.5G"),
         arg("--no-recalibrate", action="store_true", help="keep the trained BatchNorm statistics"),
         arg("--save", default=None, help="write the calibrated model (one budget) as safetensors here"),
         arg("--force", action="store_true", help="overwrite an existing --save file")),
        halting=Halting("a cascade to calibrate instead of the halting threshold, e.g. cascade:1,flip-1",
                        type=types.cascade),
        json="", test_subset=True,
        examples=("iamnn calibrate --ckpt runs/frontier/act_tau0.01 --budget-macs 5M 7M",
                  "iamnn calibrate --ckpt runs/frontier/act_tau0.01 --budget-macs 5M --save act_5M.safetensors"),
    ),
    "headroom": Command(
        "can per-image compute pay? disagreement and per-image oracle of opinions", "results:headroom",
        (arg("opinions", nargs="+", metavar="RUN:PASS,PASS",
             help="a run folder and the passes of it to compare (1, 2, full, act, flip-1 …), e.g. "
             "runs/study/fixed_k1:1,flip-1 runs/study/fixed_k2:2"),),
        json="headroom.json", test_subset=True,
        examples=("iamnn headroom runs/study/fixed_k1:1,flip-1 runs/study/fixed_k2:2",),
    ),
    "recalibrate": Command(
        "re-estimate BatchNorm statistics for a halting policy (fixed k…)", "results:recalibrate",
        (arg("-o", "--output", default=None, help="write the re-estimated model as safetensors here"), OUTPUT_FORCE),
        source="run",
        halting=Halting("the halting policy: act, full, pondernet or a fixed number of iterations k", required=True),
        json="", test_subset=True,
        examples=("iamnn recalibrate --ckpt runs/frontier/fixed_k1 --halting 2 -o k2.safetensors",
                  "iamnn recalibrate --pretrained --halting full -o full.safetensors"),
    ),
    "predict": Command(
        "classify image files with trained weights (default: the shipped model)", "inference:predict",
        (arg("images", nargs="+", help="image files or folders of images"),
         arg("--onnx", help="an ONNX file written by `iamnn export`, run with onnxruntime")),
        source="shipped", halting=Halting(REGIME), json="predictions.json",
        examples=("iamnn predict docs/samples                                # the shipped model on the sample images",
                  "iamnn predict --weights runs/demo/model.safetensors --halting full photo.png"),
    ),
    "app": Command(
        "a local web page: drop an image, see where the network spends its compute", "inference:app",
        (arg("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)"),
         arg("--port", type=int, default=None, help="port (default: the first free one from 7860)"),
         arg("--test-images", type=types.count(0, 10**6), default=1000,
             help="test images for the accuracy curve and the gallery (default 1000; 0: none)")),
        source="shipped",
        examples=("iamnn app                                                 # the shipped model on http://127.0.0.1:7860",
                  "iamnn app --weights runs/demo/model.safetensors --test-images 200"),
    ),
    "export": Command(
        "export trained weights: ONNX with early exit, or safetensors + JSON", "inference:export",
        (arg("--format", choices=("onnx", "safetensors"), default="onnx",
             help="onnx (default): a graph for onnxruntime, each stage's iterations an early-exit loop; "
             "safetensors: the weights with their JSON config, loadable without pickle"),
         arg("-o", "--output", required=True, help="output file"), OUTPUT_FORCE),
        source="required", halting=Halting("halting mode baked into the ONNX graph: act, full or k"),
        examples=("iamnn export --pretrained -o iamnn_r34_fmnist.onnx",
                  "iamnn export --weights runs/demo/model.safetensors --format safetensors -o demo.safetensors"),
    ),
    "bench": Command(
        "wall-clock speed of early exit: ResNet vs IamNN full / act / fixed-1", "timing:bench",
        (arg("--width", type=types.width, default=None, help="width of an untrained --model"),
         arg("--stem", choices=("imagenet", "cifar"), default=None, help="stem of an untrained --model"),
         arg("--input-size", type=types.count(8, 1024), default=None,
             help="input height = width (default: the model's data)"),
         arg("--batch-sizes", type=types.counts(1, 4096), default="1,64,256",
             help="comma-separated (default 1,64,256)"),
         arg("--threads", type=types.count(1, 1024), default=None, help="torch threads (default: torch's choice)"),
         arg("--no-fold", action="store_true", help="keep BatchNorm unfolded at inference"),
         arg("--device", default="cpu", help="torch device of the PyTorch rows, e.g. cuda (default: cpu)"),
         arg("--runtime", choices=("torch", "onnxruntime"), default="torch",
             help="torch (default): time the PyTorch models; onnxruntime: time ONNX exports of the same "
             "models in onnxruntime, the halting loops in the graph (needs iamnn[export])"),
         arg("--onnx", help="with --runtime onnxruntime: an `iamnn export` file, timed as the act row"),
         arg("--smoke", action="store_true", help="tiny measurement, for tests")),
        source="untrained", json="",
        examples=("iamnn bench --pretrained --batch-sizes 1,64",
                  "iamnn bench --runtime onnxruntime --onnx iamnn_r34_fmnist.onnx   # the file of `iamnn export`"),
        epilog="Without --json, the table, and the JSON written to benchmarks/results/bench.json\n"
        "(bench.onnxruntime.json with --runtime onnxruntime).",
    ),
    "demo": Command(
        "train the demo recipe on Fashion-MNIST, then print its report", "results:demo",
        (arg("--config", default=None,
             help="recipe (default: recipes/fashion_mnist/demo.yaml of the source repository)"),
         arg("-o", "--output", default="report/demo", help="report folder (default: report/demo)")),
        examples=("iamnn demo", "iamnn demo --trainer.max_epochs 1   # a shorter run"),
        epilog="Any other arguments go to `iamnn fit`, e.g. --trainer.max_epochs 1 --trainer.precision bf16-mixed.",
        defaults={"overrides": []},  # the arguments left over, in cli.main()
    ),
}  # fmt: skip

EXAMPLES: dict[str, tuple[str, ...]] = {**LIGHTNING_EXAMPLES, **{n: c.examples for n, c in COMMANDS.items()}}
