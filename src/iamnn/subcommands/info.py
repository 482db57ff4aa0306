"""``iamnn models`` and ``iamnn profile``: what is registered, and what it costs."""

from __future__ import annotations

import argparse

from rich.table import Table

from .shared import console, human, show


def models(args: argparse.Namespace) -> None:
    import torch

    from ..models import list_models
    from ..weights import create_model

    rows = []
    for name in list_models(args.pattern):
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = create_model(name)
        rows.append({
            "name": name, "kind": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "max_iterations": list(model.max_iterations), "pretrained": name in list_models(pretrained=True),
        })  # fmt: skip

    def table() -> None:
        out = Table(title="Registered models (default config: 1000 classes, 3 channels; create_model(name, ...))")
        for col in ("name", "kind", "params", "max iterations per stage", "shipped weights"):
            out.add_column(col, justify="right" if col == "params" else "left")
        for r in rows:
            its = "/".join(map(str, r["max_iterations"])) if r["kind"] == "IamNN" else "—"
            out.add_row(r["name"], r["kind"], human(r["params"]), its, "yes" if r["pretrained"] else "")
        console().print(out)

    show(rows, args.json, table)


def profile(args: argparse.Namespace) -> None:
    from ..profile import profile_table1

    rows = profile_table1(args.width)

    def table() -> None:
        out = Table(title=f"Table 1 models: ours beside the paper's (IamNN width x{args.width:g})")
        for col in ("dataset", "network", "input", "params", "paper params", "MACs 1 iter", "MACs max", "paper MACs"):
            out.add_column(col, justify="left" if col in ("dataset", "network") else "right")
        for r in rows:
            out.add_row(
                r["dataset"], f"{r['network']} ({r['model']})", f"{r['in_chans']}x{r['input_size']}²",
                human(r["params"]) if r["params_used"] == r["params"] else f"{human(r['params_used'])} used",
                r["paper_params"], human(r["macs_1_iter"]), human(r["macs_max"]), r["paper_macs"],
            )  # fmt: skip
        console().print(out)
        print(
            "MACs = multiply-accumulates of convolutions and linear layers (FlopCounterMode / 2). "
            "'MACs max' of an ACT model includes its halting units."
        )

    show(rows, args.json, table)
