"""``python -m iamnn.data ensure-fashion-mnist``: the Makefile's step that installs Fashion-MNIST if it can."""

from __future__ import annotations

import sys

from .fashion_mnist import ensure_fashion_mnist


def main(argv: list[str] | None = None) -> None:
    """Run the one command there is, ``ensure-fashion-mnist``; anything else exits with the usage line."""
    if (sys.argv[1:] if argv is None else argv) == ["ensure-fashion-mnist"]:
        ensure_fashion_mnist()
    else:
        sys.exit("usage: python -m iamnn.data ensure-fashion-mnist")


if __name__ == "__main__":
    main()
