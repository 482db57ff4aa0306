"""The shipped model's preprocessing as timm spells it (``resolve_data_config``, ``create_transform``),
and ``iamnn predict``'s defaults: the shipped model, and ``--json [PATH]`` as the other commands take it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import iamnn
from iamnn import prediction
from iamnn.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "test00000_ankle-boot.png"


def test_create_transform_gives_the_tensor_predict_feeds_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = iamnn.create_model("iamnn_r34_fmnist", pretrained=True)
    config = iamnn.resolve_data_config(model)
    data = model.data_config
    assert config == {"input_size": (1, 28, 28), "interpolation": "bilinear", "mean": tuple(data["mean"]),
                      "std": tuple(data["std"]), "crop_pct": 1.0}  # fmt: skip
    assert iamnn.resolve_data_config(data) == config  # the weights' data config itself, too
    fed: list[torch.Tensor] = []
    real_runner = prediction.torch_runner

    def recording_runner(net, halting=None):  # noqa: ANN001, ANN202
        run = real_runner(net, halting)
        return lambda x: (fed.append(x), run(x))[1]

    monkeypatch.setattr(prediction, "torch_runner", recording_runner)
    # an RGB photo neither square nor at the input size: grey conversion, resize and centre crop all act
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 37, 3), dtype=np.uint8))
    with Image.open(SAMPLE) as sample:
        images = [photo, sample.copy()]
    predictions = iamnn.predict(images, model)
    (batch,) = fed
    transform = iamnn.create_transform(config)
    assert batch.shape == (2, 1, 28, 28) and len(predictions) == 2
    assert torch.equal(torch.stack([transform(img) for img in images]), batch)
    assert predictions[1].label == "Ankle boot"


def test_predict_uses_the_shipped_model_and_takes_json_as_the_other_commands(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    image = SAMPLE.read_bytes()
    main(["predict", "--json", str(SAMPLE)])  # the image after a bare --json is an image, not the JSON's PATH
    printed = json.loads(capsys.readouterr().out)
    assert printed["weights"] == "shipped iamnn_r34_fmnist" and SAMPLE.read_bytes() == image
    assert [p["label"] for p in printed["predictions"]] == [p.label for p in iamnn.predict(SAMPLE)] == ["Ankle boot"]

    main(["predict", str(SAMPLE), "--json", str(tmp_path / "p.json")])  # the table, and the JSON in a file
    out = capsys.readouterr().out
    assert "Ankle boot" in out and "weights: shipped iamnn_r34_fmnist" in out and f"wrote {tmp_path / 'p.json'}" in out
    assert json.loads((tmp_path / "p.json").read_text()) == printed

    main(["predict", "--model", "iamnn_r34_fmnist_cascade", "--json", str(SAMPLE)])  # another shipped model
    cascade = json.loads(capsys.readouterr().out)
    assert cascade["weights"] == "shipped iamnn_r34_fmnist_cascade"
    assert cascade["predictions"][0]["answered_by"] is not None

    notes = tmp_path / "notes.txt"  # an existing file after --json is an input: never overwritten by the result
    notes.write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--json", str(notes), str(SAMPLE)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and notes.read_text() == "mine" and "skipped" in captured.err
    assert [p["label"] for p in json.loads(captured.out)["predictions"]] == ["Ankle boot"]

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--json", str(tmp_path / "q.json")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("iamnn predict: error:") and "images" in err
    assert not (tmp_path / "q.json").exists()
