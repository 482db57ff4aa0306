"""Crash-safe file writes (a reader sees the old file or the complete new one, never a partial one),
bounded YAML reads (a small recipe cannot expand into gigabytes), and bounded image reads (one
decoder for training on a folder and for ``iamnn predict``, so both see the same pixels)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (ONNX, figures); on
    success the file is fsynced and renamed onto ``path``.

    The rename is atomic on POSIX file systems, and the directory is fsynced after it so that the
    new name survives a power cut. If the body raises (or the process dies), ``path`` is untouched;
    the temporary file is removed on an exception, and one orphaned by a SIGKILL
    (``.<name>.<pid>.*.tmp``) is ignored by every reader and removed by the next write of ``path``
    once its process is gone; another process's write in progress is left alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if not _writer_alive(stale, path.name):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` (``atomic_path``)."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()


OUTPUT_MARKER = ".iamnn-output"  # in a folder an iamnn command wrote as a whole: it may replace it


@contextlib.contextmanager
def atomic_folder(path: str | Path, owned: tuple[str, ...]) -> Iterator[Path]:
    """A fresh temporary folder beside ``path`` to write a set of outputs into (a report: table,
    JSON, figures); on success it replaces ``path`` as a whole, so the set appears together or not
    at all, and nothing from an earlier set (a figure of a run no longer reported) stays behind.

    Only a folder this command wrote is replaced: ``path`` may be new or empty, or hold the marker
    file :data:`OUTPUT_MARKER` that every set written here carries, beside files that patterns in
    ``owned`` (``"*.png"``) match. Anything else (a folder of the user's own PNGs, a folder without
    the marker) is ValueError, and nothing is touched. A kill while writing leaves
    ``path`` as it was; a kill in the instant between the two renames of the swap leaves the old
    set as ``.<name>.<pid>.old``, which the next write puts back before starting.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{path}: a file stands where its folder would be") from None
    for stale in sorted(path.parent.glob(f".{path.name}.*.old")) + sorted(path.parent.glob(f".{path.name}.*.tmp")):
        if stale.is_dir() and not _writer_alive(stale, path.name):
            if stale.suffix == ".old" and not path.exists():
                os.replace(stale, path)  # a swap cut short: the old set comes back
            else:
                shutil.rmtree(stale, ignore_errors=True)
    if path.exists() or path.is_symlink():
        _check_own_folder(path, owned)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        (tmp / OUTPUT_MARKER).write_text("written as a whole by an iamnn command, which may replace it\n")
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o777 & ~_umask())
        _fsync_dir(tmp)
        if path.exists():
            old = tmp.with_suffix(".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def _check_own_folder(path: Path, owned: tuple[str, ...]) -> None:
    """ValueError unless ``path`` is an empty folder or one an iamnn command wrote (its marker, and
    only files ``owned`` names): a folder of the user's files is never replaced."""
    if path.is_symlink() or not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder an iamnn command wrote: give a new output folder")
    entries = list(path.iterdir())
    if not entries:
        return
    marked = any(e.name == OUTPUT_MARKER and e.is_file() for e in entries)
    foreign = [e.name for e in entries if e.name != OUTPUT_MARKER and (e.is_dir() or e.is_symlink()
               or not any(e.match(pat) for pat in owned))]  # fmt: skip
    if foreign or not marked:
        shown = ", ".join((foreign or [e.name for e in entries])[:3])
        raise ValueError(f"{path} holds files this command did not write ({shown}): give an empty or new output folder")


def check_output_file(path: str | Path, force: bool = False, sidecars: tuple[str, ...] = ()) -> Path:
    """``path`` as a file a command may write, checked before any work: ValueError if it is a
    folder, a symlink, under something that is not a folder, or (without ``force``) an existing
    file; ``sidecars`` (``".json"``) are files written beside it under the same rule."""
    path = Path(path)
    for target in (path, *(path.with_suffix(suffix) for suffix in sidecars)):
        if target.is_symlink():
            raise ValueError(f"{target} is a symlink: give the file itself or a new name")
        if target.is_dir():
            raise ValueError(f"{target} is a folder: give a file name")
        if target.exists() and not force:
            raise ValueError(f"{target} exists (use --force to overwrite)")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise ValueError(f"{path}: {parent} is not a folder")
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _writer_alive(tmp: Path, name: str) -> bool:
    """Whether the process that named the temporary file ``.<name>.<pid>.*.tmp`` still runs here."""
    pid = tmp.name[len(name) + 2 :].split(".", 1)[0]
    if not pid.isdigit():
        return False  # an older temporary file without a pid: an orphan
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/file system can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


MAX_YAML_NODES = 100_000  # a recipe or run config has a few hundred


def load_yaml(path: str | Path, max_nodes: int = MAX_YAML_NODES, max_bytes: int = 10 * 2**20) -> Any:
    """``yaml.safe_load`` of a file, refused (ValueError) when it is over ``max_bytes`` or its
    aliases would expand it to more than ``max_nodes`` nodes: nested aliases ("billion laughs")
    make a 600-byte file expand exponentially, and safe_load builds every copy."""
    path = Path(path)
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, more than a YAML config needs ({max_bytes})")
    text = path.read_text()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # aliases stay references to one node here
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a YAML config") from None
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:  # expanded size, each distinct node counted once
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a recursive alias counts once
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            )
            sizes[id(node)] = 1 + sum(size(child) for child in children)
        return sizes[id(node)]

    try:
        too_big = root is not None and size(root) > max_nodes
    except RecursionError:
        too_big = True
    if too_big:
        raise ValueError(f"{path}: its aliases expand to more than {max_nodes} YAML nodes (nested aliases?)")
    return yaml.safe_load(text)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (``hashlib.file_digest`` is Python 3.11+)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# what torchvision's ImageFolder reads, and GIF (its first frame)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` names an image by its suffix; hidden files never do (macOS writes a
    ``._photo.jpg`` of metadata beside every ``photo.jpg`` it copies to a foreign disk)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def read_image(path: str | Path, in_chans: int) -> Image.Image:
    """An image file decoded upright (EXIF orientation applied) as grey (``in_chans`` 1) or RGB.

    ValueError for a file that is not an image Pillow reads, or that has too many pixels to
    decode safely; a missing or unreadable file raises its own OSError.
    """
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: refuse both
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                # a phone photo stores "rotated" in EXIF: without this it was classified sideways
                return convert_image(ImageOps.exif_transpose(img), in_chans)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # the caller says which
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ValueError(f"too many pixels to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels)") from None
    except (UnidentifiedImageError, OSError) as err:
        reason = "not an image format Pillow reads" if isinstance(err, UnidentifiedImageError) else str(err)
        raise ValueError(f"not a readable image ({reason.splitlines()[0] if reason else type(err).__name__})") from None


def convert_image(img: Image.Image, in_chans: int) -> Image.Image:
    """Grey ("L") or RGB, 8 bits. A 16-bit grey image is scaled to 8 bits (Pillow's own convert
    would clip every value above 255 to white)."""
    import numpy as np
    from PIL import Image

    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(img, dtype=np.int64)
        if img.mode != "I" or values.max(initial=0) > 255:  # 32-bit "I" holding 8-bit values stays as it is
            values = values // 257
        img = Image.fromarray(values.clip(0, 255).astype(np.uint8), "L")
    return img.convert("L" if in_chans == 1 else "RGB")
