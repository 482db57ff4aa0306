"""``python -m iamnn.data``: the Makefile's step that installs Fashion-MNIST if it can
(``ensure-fashion-mnist``), and a small folder of images to try ``iamnn fit`` on (``make-example-folder``)."""

from __future__ import annotations

import argparse
import sys

from ..errors import IamNNError
from .fashion_mnist import ensure_fashion_mnist
from .folder import make_example_folder


def main(argv: list[str] | None = None) -> None:
    """Run one command; a bad one exits 2 with the usage, a failed one with one line."""
    parser = argparse.ArgumentParser(prog="python -m iamnn.data")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure-fashion-mnist", help="install the Debian package dataset-fashion-mnist if missing")
    p = sub.add_parser("make-example-folder", help="circles, squares and triangles, one folder per class")
    p.add_argument("folder", help="where to write it (a new or empty folder)")
    p.add_argument("--per-class", type=int, default=200, help="images of each class (default 200)")
    p.add_argument("--size", type=int, default=64, help="about how many pixels a side (default 64)")
    p.add_argument("--seed", type=int, default=0, help="another seed draws other images (default 0)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "ensure-fashion-mnist":
            ensure_fashion_mnist()
        else:
            root = make_example_folder(args.folder, args.per_class, args.size, args.seed)
            print(f"wrote {3 * args.per_class} images to {root}/circle, {root}/square and {root}/triangle")
    except (IamNNError, ValueError) as err:
        print(f"python -m iamnn.data {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
