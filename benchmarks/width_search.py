"""Does some width setting give the paper's params AND MACs at once? (docs/architecture.md, "Widths and the paper")

Scans the uniform width multiplier and a few per-stage widths for the CIFAR IamNN (r101 preset,
32x32, 10 classes) and the ImageNet IamNN (r152 preset, 224x224). Paper: CIFAR-10 4.5 M params,
MACs 0.7–2 G (avg 1.1 G); ImageNet 5 M params (4.8 M for 1 iter), 0.9 G for one iteration,
2.5–9 G with ACT. Prints a table and writes JSON to benchmarks/results/width_search.json.

    .venv/bin/python benchmarks/width_search.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import iamnn
from iamnn.cost import count_params

CANDIDATES = [{"width": w} for w in (1.0, 0.9, 0.8, 0.77, 0.7, 0.69)] + [
    {"channels": (256, 512, 1024, 1024)},
    {"channels": (256, 512, 1024, 1280)},
    {"channels": (256, 512, 896, 1024)},
]


def measure(model_name: str, stem: str, size: int, classes: int, **kwargs: object) -> dict[str, object]:
    with torch.device("meta"):
        model = iamnn.create_model(model_name, stem=stem, num_classes=classes, **kwargs)
    hw = (size, size)
    return {
        "model": model_name,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
        "params_M": round(count_params(model) / 1e6, 3),
        "macs_1_iter_G": round(model.max_macs(hw, 1) / 1e9, 3),
        "macs_max_G": round(model.max_macs(hw, "act") / 1e9, 3),
    }


def main() -> None:
    rows = []
    for kwargs in CANDIDATES:
        rows.append(measure("iamnn_r101", "cifar", 32, 10, **kwargs))
        rows.append(measure("iamnn_r152", "imagenet", 224, 1000, **kwargs))
    print(f"{'model':11} {'setting':28} {'params':>8} {'MACs 1 iter':>12} {'MACs max':>9}")
    for r in rows:
        setting = f"width={r['width']}" if "width" in r else f"channels={r['channels']}"
        print(f"{r['model']:11} {setting:28} {r['params_M']:7.2f}M {r['macs_1_iter_G']:11.2f}G {r['macs_max_G']:8.2f}G")
    print("paper: iamnn_r101 (CIFAR-10) 4.5 M, 0.7-2 G;  iamnn_r152 (ImageNet) 5 M, 0.9 G for 1 iter, 2.5-9 G")
    out = Path(__file__).parent / "results" / "width_search.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
