"""``iamnn app``: a local web UI (Gradio) that shows where an IamNN spends its compute on one image.

The page opens on the gallery's first image, already analysed. Drop an image, pick one from a
gallery of test images ordered from cheapest to most expensive, or draw one; the page shows the
top-5 classes, each stage's iterations against its maximum, the cumulative halting score per
iteration with the threshold where the stage stopped, and the image's MACs against running every
iteration and against the same-preset ResNet (or MobileNet). A slider moves the halting threshold
and re-runs the image; the accuracy-vs-MACs curve of the model (measured at start-up on test
images) marks the current setting. For a model whose halting policy is a confidence cascade
(``models/cascade.py``) the slider moves the cascade's threshold, and the page shows which pass
answered and the confidence after each pass. What the slider does, and the level drawn on the
halting-score plot, are the policy's own words (``threshold_text``, ``stop_level``).

Everything runs locally: no asset is fetched from the internet, requests are queued one at a
time (a second user waits, nobody crashes), and an upload that is not an image gets a message
in the page. :class:`Explorer` is the model side (usable without Gradio); :func:`build_app`
the page.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from .bench import baseline_for, baseline_label, baseline_name
from .cost import model_macs
from .errors import one_line
from .models import IamNN
from .models.cascade import confidence
from .models.halting import network_policy, stage_policies
from .plots import pyplot_agg
from .prediction import load_image, skip_reason

THRESHOLDS = (0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9)  # ε of the start-up accuracy curve
CASCADE_THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)  # a cascade's, for its curve
GALLERY_SIZE = 12


@dataclass
class Analysis:
    """What the model did on one image under halting slack ``epsilon``."""

    label: str
    top5: dict[str, float]
    iterations: list[int]
    max_iterations: list[int]
    macs: int
    macs_full: int
    macs_baseline: int
    baseline: str
    epsilon: float
    threshold: float | None  # the level Σ h must reach to stop (ACT: 1 − ε; None: the policy has none)
    scores: list[list[float]]  # per stage, the halting score h_i after each iteration that called the unit
    #: under a cascade: the 1-based pass that answered, and the confidence after each pass run
    answered_by: int | None = None
    confidences: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass(eq=False)  # compared and hashed by identity: the figure caches are keyed by it
class Explorer:
    """The model side of the app: analyses images and knows the model's accuracy curve.

    ``test_images``: how many test images of the model's dataset to measure the curve and fill
    the gallery with at start-up (0: neither; also skipped when the dataset is not installed).
    """

    model: IamNN
    test_images: int = 1000
    curve: list[dict[str, float]] = field(default_factory=list)
    gallery: list[tuple[Image.Image, str]] = field(default_factory=list)
    curve_note: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, IamNN):
            raise ValueError(f"the app explores an IamNN; got a {type(self.model).__name__}")
        self.model.eval()
        self.data = getattr(self.model, "data_config", None)
        if not self.data:
            raise ValueError("the model carries no preprocessing (input size, mean, std): load it from a weights file")
        self.names = list(self.data.get("class_names") or [])
        self.hw = tuple(self.data["input_size"])
        self.macs_full = self.model.max_macs(self.hw, "full")
        self.baseline = baseline_name(self.model)
        shape = (self.data["in_chans"], *self.hw)
        self.macs_baseline = model_macs(baseline_for(self.model), shape)
        self.cascade = network_policy(self.model.halting)
        if self.cascade is not None:  # the slider is the cascade's threshold t (one for every pass)
            self.default_epsilon = float(self.cascade.thresholds[0]) if self.cascade.thresholds else 1.0
            self.adaptive = len(self.cascade.passes) > 1
            self.threshold_text = self.cascade.threshold_text
        else:
            self.default_epsilon = float(self.model.epsilon)
            self.adaptive = any(p.uses_scores for p in self.model.policies())
            own = self.model.policies()[0]
            self.threshold_text = (own.with_threshold(self.default_epsilon) or own).threshold_text
        if self.test_images > 0:
            self._measure_curve()

    def policies(self, epsilon: float) -> Any:
        """The model's own halting policy with slack ``epsilon`` (one object when every stage shares
        it); a cascade with ``epsilon`` as its threshold."""
        if self.cascade is not None:
            return self.cascade.with_thresholds((epsilon,) * len(self.cascade.thresholds))
        policies = stage_policies(self.model.halting, len(self.model.stages), epsilon)
        return policies[0] if all(p is policies[0] for p in policies) else policies

    # -- one image --------------------------------------------------------------------------
    def preprocess(self, image: Image.Image | str | Path) -> Tensor:
        """The model's input for an image or image file (ValueError if it is not an image)."""
        return load_image(image if isinstance(image, Image.Image) else Path(image), self.data)

    def as_seen(self, image: Image.Image | str | Path) -> Image.Image:
        """The model's input for ``image`` as a picture: preprocessed, then un-normalised."""
        return self._picture(self.preprocess(image))

    def _picture(self, x: Tensor) -> Image.Image:
        mean = torch.tensor(self.data["mean"]).view(-1, 1, 1)
        std = torch.tensor(self.data["std"]).view(-1, 1, 1)
        pixels = ((x * std + mean).clamp(0, 1) * 255).round().byte()
        return Image.fromarray(pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy())

    @torch.no_grad()
    def analyse(self, image: Image.Image | str | Path, epsilon: float | None = None) -> Analysis:
        eps = self.default_epsilon if epsilon is None else float(epsilon)
        policies = self.policies(eps)
        scores: list[list[float]] = [[] for _ in self.model.stages]
        hooks = [
            stage.halting_unit.register_forward_hook(lambda m, a, out, k=k: scores[k].append(float(out.reshape(-1)[0])))
            for k, stage in enumerate(self.model.stages)
        ]
        x = self.preprocess(image)[None]
        try:
            logits, stats = self.model(x, return_stats=True, halting=policies)
        finally:
            for hook in hooks:
                hook.remove()
        confidences = []
        if self.cascade is not None:  # the confidence of the answer after each pass it ran
            probs = [p for p, _ in policies.trace(self.model, x)][: int(stats.answered_by[0]) + 1]
            confidences = [
                float(confidence(policies.answer(probs[: j + 1]), policies.score)) for j in range(len(probs))
            ]
        prob = logits.softmax(1)[0]
        top = prob.topk(min(5, len(prob)))
        label = lambda i: self.names[i] if i < len(self.names) else str(i)  # noqa: E731
        # the level Σ h must reach to stop, when every stage's policy has the same one (ACT's 1 − ε)
        levels = {p.stop_level() for p in self.model.policies(policies)} if self.cascade is None else {None}
        return Analysis(
            label=label(int(top.indices[0])),
            top5={label(int(i)): float(p) for p, i in zip(top.values, top.indices, strict=True)},
            iterations=stats.iterations[0].tolist(),
            max_iterations=list(self.model.max_iterations),
            macs=int(stats.macs[0]),
            macs_full=self.macs_full,
            macs_baseline=self.macs_baseline,
            baseline=self.baseline,
            epsilon=eps,
            threshold=levels.pop() if len(levels) == 1 else None,
            scores=scores,
            answered_by=None if stats.answered_by is None else int(stats.answered_by[0]) + 1,
            confidences=confidences,
        )

    # -- the test set ---------------------------------------------------------------------------
    def _measure_curve(self) -> None:
        """Accuracy and average MACs at a few thresholds on ``test_images`` test images (no
        BatchNorm re-estimation: the model as it is), and a gallery ordered by cost."""
        from .data import DatasetError, datamodule_class
        from .evaluation import evaluate

        try:
            dm = datamodule_class(self.data["dataset"])(val_size=0, augment=False, test_subset=self.test_images)
            dm.setup("test")
        except (DatasetError, KeyError, ValueError, OSError) as err:
            self.curve_note = f"no accuracy curve: the test set is not available ({one_line(err)})"
            return
        loader = dm.test_dataloader()
        grid = CASCADE_THRESHOLDS if self.cascade is not None else THRESHOLDS
        thresholds = sorted({*grid, self.default_epsilon}) if self.adaptive else [self.default_epsilon]
        for eps in thresholds:
            ev = evaluate(self.model, loader, "app", halting=self.policies(eps))
            self.curve.append({"epsilon": eps, "macs": ev.macs_mean, "top1": ev.top1})
            if eps == self.default_epsilon:
                own = ev
        self.curve_note = f"{len(own.label)} test images, the model as it is (no BatchNorm re-estimation)"
        self.gallery = self._gallery(dm, own)

    def _gallery(self, dm: Any, ev: Any) -> list[tuple[Image.Image, str]]:
        """``GALLERY_SIZE`` test images spread over the cost range, cheapest first (ties: the more
        confident first), each captioned with its class and MACs."""
        order = sorted(range(len(ev.label)), key=lambda i: (int(ev.macs[i]), -float(ev.confidence[i])))
        picks = [order[round(j * (len(order) - 1) / max(1, GALLERY_SIZE - 1))] for j in range(GALLERY_SIZE)]
        out = []
        for i in dict.fromkeys(picks):
            x, y = dm.test_set[i]
            name = self.names[int(y)] if int(y) < len(self.names) else str(int(y))
            out.append((self._picture(x), f"{name} · {int(ev.macs[i]) / 1e6:.2f} M MACs"))
        return out


# -- the page --------------------------------------------------------------------------------------
def sketch_image(sketch: Any) -> Image.Image | None:
    """The sketch pad's drawing as a grey image, inverted: strokes are dark on a light pad, while
    Fashion-MNIST objects are light on black. None when nothing is drawn."""
    composite = sketch.get("composite") if isinstance(sketch, dict) else sketch
    if composite is None:
        return None
    image = Image.fromarray(np.asarray(composite)).convert("L")
    if image.getextrema()[0] == image.getextrema()[1]:  # a blank pad
        return None
    return ImageOps.invert(image)


def _figures(explorer: Explorer, result: Analysis | None) -> tuple[str, str]:
    """The halting-score plot of ``result`` and the accuracy curve with its setting marked, as
    inline PNGs. Both are cached: a figure drawn once is not drawn (and encoded) again."""
    if result is None:
        return _scores_html(explorer, None), _curve_html(explorer, None)
    if explorer.cascade is not None:
        scores: tuple = ("cascade", tuple(round(c, 6) for c in result.confidences), result.epsilon)
    else:
        scores = (tuple(result.iterations), tuple(tuple(round(h, 6) for h in s) for s in result.scores),
                  result.threshold)  # fmt: skip
    marked = (
        min(explorer.curve, key=lambda c: abs(c["epsilon"] - result.epsilon))["epsilon"] if explorer.curve else None
    )
    return _scores_html(explorer, scores), _curve_html(explorer, marked)


@functools.lru_cache(maxsize=256)
def _scores_html(explorer: Explorer, scores: tuple | None) -> str:
    if explorer.cascade is not None:
        return _passes_html(explorer, scores)
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(5.2, 3.2), layout="constrained")
    if scores is not None:
        iterations, per_stage, threshold = scores
        for k, (n, h) in enumerate(zip(iterations, per_stage, strict=True)):
            cum = np.cumsum(h[:n])
            (line,) = ax.plot(np.arange(1, len(cum) + 1), cum, marker="o",
                              label=f"stage {k + 1}: {n} of {explorer.model.max_iterations[k]}")  # fmt: skip
            if n > len(cum):  # the last allowed iteration stops unconditionally (h := 1): no score computed
                top = threshold if threshold is not None else 1.0
                ax.plot([len(cum), n], [cum[-1] if len(cum) else 0.0, top], linestyle=":", color=line.get_color())
                ax.plot([n], [top], marker="*", markersize=13, color=line.get_color())
            else:
                ax.plot([n], [cum[n - 1]], marker="*", markersize=13, color=line.get_color())
        if threshold is not None:
            ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"1 − ε = {threshold:.2f}")
        ax.legend(fontsize=7, loc="best")
    ax.set(xlabel="iteration (dotted: to the last allowed one, which always stops)", ylabel="Σ halting scores",
           title="cumulative halting score: where each stage stopped (★)")  # fmt: skip
    ax.set_xticks(range(1, max(explorer.model.max_iterations) + 1))
    return _figure_html(fig, "cumulative halting scores per stage")


def _passes_html(explorer: Explorer, scores: tuple | None) -> str:
    """A cascade's view of one image: the confidence of its answer after each pass it ran, and the
    threshold it had to reach to leave."""
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(5.2, 3.2), layout="constrained")
    specs = [p.spec for p in explorer.cascade.passes]
    if scores is not None:
        _, confidences, threshold = scores
        ax.bar(range(1, len(confidences) + 1), confidences, color="tab:blue")
        ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold t = {threshold:.2f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(1, len(specs) + 1), [f"pass {j + 1}\n{s}" for j, s in enumerate(specs)])
    ax.set(xlim=(0.4, len(specs) + 0.6), ylim=(0, 1.02), ylabel="confidence of the answer",
           title="a pass answers once its confidence reaches t")  # fmt: skip
    return _figure_html(fig, "confidence after each pass")


@functools.lru_cache(maxsize=64)
def _curve_html(explorer: Explorer, marked: float | None) -> str:
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(5.2, 3.2), layout="constrained")
    if explorer.curve:
        ax.plot([c["macs"] / 1e6 for c in explorer.curve], [c["top1"] for c in explorer.curve], marker="o")
        for c in explorer.curve:
            if c["epsilon"] == marked:
                knob = "t" if explorer.cascade is not None else "ε"
                ax.plot([c["macs"] / 1e6], [c["top1"]], marker="*", markersize=16, color="tab:red",
                        label=f"{knob} = {c['epsilon']:.2f}")  # fmt: skip
                ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, explorer.curve_note or "no curve", ha="center", va="center", wrap=True,
                transform=ax.transAxes)  # fmt: skip
    ax.set(xlabel="average MACs (M)", ylabel="top-1 (%)", title="accuracy vs average MACs")
    return _figure_html(fig, "accuracy against average MACs")


def _png_img(png: bytes, alt: str, attributes: str) -> str:
    """An HTML <img> holding ``png`` as a data URL: inline, so no file of Gradio's cache is involved."""
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(png).decode()}" {attributes}>'


def _figure_html(fig: Any, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot_agg().close(fig)
    return _png_img(buffer.getvalue(), alt, 'style="width: 100%"')


def _summary_markdown(r: Analysis) -> str:
    its = " / ".join(f"{n} of {m}" for n, m in zip(r.iterations, r.max_iterations, strict=True))
    passes = "" if r.answered_by is None else f"answered by pass **{r.answered_by}** · "
    return (
        f"### {r.label} ({r.top5[r.label] * 100:.1f} %)\n"
        f"{passes}iterations per stage{' (every pass)' if passes else ''}: **{its}**\n\n"
        f"MACs: **{r.macs:,}** ({r.macs / 1e6:.2f} M) · {100 * r.macs / r.macs_full:.0f} % of running every iteration "
        f"({r.macs_full / 1e6:.2f} M) · {100 * r.macs / r.macs_baseline:.0f} % of {baseline_label(r.baseline)} "
        f"({r.macs_baseline / 1e6:.2f} M)"
    )


def _inline_image(image: Image.Image, scale: int = 5) -> str:
    """``image`` as an HTML <img> holding its PNG as a data URL, drawn ``scale`` times larger."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    attributes = f'width="{scale * image.width}" style="image-rendering: pixelated"'
    return _png_img(buffer.getvalue(), "the image as the model sees it", attributes)


class _Page:
    """The page's event handlers around one explorer; each returns its outputs' new values."""

    def __init__(self, explorer: Explorer) -> None:
        self.explorer = explorer

    def show(self, image: Image.Image | None, epsilon: float, source: str = "") -> tuple[Any, ...]:
        """(preview, status, top-5, summary, scores plot, curve plot) for ``image`` at ``epsilon``."""
        explorer = self.explorer
        if image is None:
            return ("", "", None, "", *_figures(explorer, None))
        high = 1.0 if explorer.cascade is not None else 0.99
        if not isinstance(epsilon, int | float) or not 0.0 <= epsilon <= high:  # NaN too (an API call)
            return ("", f"**The threshold must be a number in [0, {high}]**, got {epsilon!r}", None, "",
                    *_figures(explorer, None))  # fmt: skip
        try:
            result = explorer.analyse(image, epsilon)
        except (ValueError, OSError) as err:
            message = f"**Could not read {source or 'the image'}**: {skip_reason(err)}"
            return ("", message, None, "", *_figures(explorer, None))
        return (
            _inline_image(explorer.as_seen(image)),
            "",
            result.top5,
            _summary_markdown(result),
            *_figures(explorer, result),
        )

    def from_file(self, file: str | None, epsilon: float) -> tuple[Any, ...]:
        if file is None:
            return (None, *self.show(None, epsilon))
        name = Path(file).name
        try:
            self.explorer.preprocess(file)  # the checks `iamnn predict` makes (format, truncation, pixel bombs)
            with Image.open(file) as img:
                image = img.copy()
        except (ValueError, OSError) as err:
            message = f"**Could not read {name}**: {skip_reason(err)}"
            return (None, "", message, None, "", *_figures(self.explorer, None))
        return (image, *self.show(image, epsilon, name))

    def from_sketch(self, sketch: Any, epsilon: float) -> tuple[Any, ...]:
        image = sketch_image(sketch)
        return (image, *self.show(image, epsilon, "the drawing"))

    def from_gallery(self, epsilon: float, evt: Any) -> tuple[Any, ...]:  # evt: gr.SelectData, set by build_app
        image = self.explorer.gallery[evt.index][0]
        return (image, *self.show(image, epsilon))

    def rerun(self, image: Image.Image | None, epsilon: float) -> tuple[Any, ...]:
        return self.show(image, epsilon)

    def first_page(self, epsilon: float) -> tuple[Any, ...]:
        # a page that opens on an answer shows what the app is for before anything is picked
        explorer = self.explorer
        if not explorer.gallery:
            note = "Drop an image or draw one" + (f" ({explorer.curve_note})." if explorer.curve_note else ".")
            return (None, "", note, *self.show(None, epsilon)[2:])
        image, caption = explorer.gallery[0]
        preview, _, *rest = self.show(image, epsilon)
        note = f"The first test image ({caption}): drop an image, pick another or draw one."
        return (image, preview, note, *rest)


INTRO = (
    "## IamNN: where does the network spend its compute?\n"
    "Each stage iterates one shared block until its halting unit says stop. Drop an image, pick a test "
    "image (cheapest first) or draw one; move the threshold to trade accuracy for MACs."
)


def _image_sources(gr: Any, explorer: Explorer) -> tuple[Any, Any, Any]:
    """The three ways to give an image, as tabs: an upload, the gallery of test images, a sketch pad."""
    with gr.Tabs():
        with gr.Tab("Upload"):
            upload = gr.File(label="image file", type="filepath", elem_id="upload")
        with gr.Tab("Test images, cheapest first"):
            gallery = gr.Gallery(
                value=explorer.gallery or None, columns=4, height=330, allow_preview=False,
                label=explorer.curve_note, elem_id="gallery",
            )  # fmt: skip
        with gr.Tab("Draw"):
            sketch = gr.Sketchpad(label="draw an object (dark on light)", type="numpy",
                                  image_mode="RGB", canvas_size=(280, 280), elem_id="sketch")  # fmt: skip
    return upload, gallery, sketch


def _threshold_slider(gr: Any, explorer: Explorer) -> Any:
    """The slider of the model's threshold, saying what it does in the policy's own words."""
    if explorer.cascade is not None:
        label, high, note = "cascade threshold t", 1.0, ""
    else:
        label, high = "halting slack ε", 0.99
        note = "" if explorer.adaptive else " (this model runs a fixed schedule)"
    return gr.Slider(0.0, high, value=explorer.default_epsilon, step=0.01, label=label,
                     info=explorer.threshold_text + note, elem_id="epsilon")  # fmt: skip


def build_app(explorer: Explorer) -> Any:
    """The Gradio page around ``explorer``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    # Gradio finds the event-data argument by its annotation, which `from __future__ import
    # annotations` turns into a string it cannot resolve here
    _Page.from_gallery.__annotations__["evt"] = gr.SelectData
    page = _Page(explorer)
    with gr.Blocks(title="iamnn: see it think") as app:
        current = gr.State(None)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                upload, gallery, sketch = _image_sources(gr, explorer)
                epsilon = _threshold_slider(gr, explorer)
                # inline (a data URL), not a file: Gradio writes output images to a cache file named by
                # their content, and a second request rewriting it while the first one's is being
                # served breaks that response (seen in the load test)
                preview = gr.HTML(label="the image as the model sees it", elem_id="preview")
            with gr.Column(scale=1):
                status = gr.Markdown(elem_id="status")
                summary = gr.Markdown(elem_id="summary")
                top5 = gr.Label(num_top_classes=5, label="top-5", elem_id="top5")
        with gr.Row():
            scores_plot = gr.HTML(elem_id="scores")  # inline PNGs, drawn once per figure (_figures)
            curve_plot = gr.HTML(elem_id="curve")
        outputs = [preview, status, top5, summary, scores_plot, curve_plot]
        upload.upload(page.from_file, [upload, epsilon], [current, *outputs], api_name="analyse_file")
        gallery.select(page.from_gallery, [epsilon], [current, *outputs], api_name=False)
        sketch.change(page.from_sketch, [sketch, epsilon], [current, *outputs], api_name=False)
        epsilon.release(page.rerun, [current, epsilon], outputs, api_name=False)
        app.load(page.first_page, [epsilon], [current, *outputs], api_name=False)
    return app


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> Any:
    """Start the page on ``host:port`` (default port: Gradio's first free one from 7860) and print
    its address in one line. Requests are queued and served one at a time."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    app = build_app(explorer)
    app.queue(default_concurrency_limit=1, max_size=256)
    # system fonts: the default theme would fetch its fonts from the internet
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    # quiet: Gradio's own lines advise `share=True`, which would publish the page on the internet
    app.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False,
               max_file_size="20mb", theme=theme, footer_links=[])  # fmt: skip
    print(f"iamnn app: open {app.local_url} in a browser (Ctrl-C stops it)", flush=True)
    if block:
        app.block_thread()
    return app
