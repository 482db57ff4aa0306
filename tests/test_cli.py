"""The `iamnn` command: every subcommand's help ends with examples that parse; its option groups
(model source, --halting, --json, --test-subset) are declared once and mean the same everywhere."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import pytest

from iamnn.cli import EXAMPLES, LIGHTNING_COMMANDS, build_parser, json_words, main
from iamnn.subcommands import COMMANDS, SHIPPED

SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "test00000_ankle-boot.png"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_subcommand_help_ends_with_examples(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code in (0, None)
    help_text = capsys.readouterr().out
    examples = help_text.split("\nexamples:\n")[-1].splitlines()
    assert "\nexamples:\n" in help_text and examples, help_text[-500:]
    # one example a line, as written (not refilled into a paragraph)
    assert examples == [f"  {line}" for line in EXAMPLES[command]]
    assert all(line.startswith(f"  iamnn {command} ") or line == f"  iamnn {command}" for line in examples)


@pytest.mark.parametrize("command", sorted(set(EXAMPLES) - set(LIGHTNING_COMMANDS)))
def test_the_examples_parse(command: str) -> None:
    parser = build_parser()
    for line in EXAMPLES[command]:
        args, extra = parser.parse_known_args(shlex.split(line, comments=True)[1:])
        assert args.command == command and (not extra or command == "demo"), line


@pytest.mark.parametrize(
    ("command", "option", "says"),
    [("export", "--format {onnx,safetensors}", "safetensors: the weights with their JSON config"),
     ("bench", "--runtime {torch,onnxruntime}", "onnxruntime: time ONNX exports of the same models")],
)  # fmt: skip
def test_the_choices_of_export_and_bench_are_explained(
    command: str, option: str, says: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{option} " in text and says in text.split(option)[-1], text


# -- option groups, declared once ------------------------------------------------------------------
SAMPLE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "test00000_ankle-boot.png"


def _refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make loading weights or data fail loudly: a parse error must come before either."""

    def loaded(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights or data were loaded before the arguments were checked")

    import iamnn.runs
    import iamnn.weights

    monkeypatch.setattr(iamnn.weights, "resolve", loaded)
    monkeypatch.setattr(iamnn.runs, "datamodule_of_weights", loaded)
    monkeypatch.setattr(iamnn.runs, "load_iamnn_run", loaded)


@pytest.mark.parametrize("command", sorted(n for n, c in COMMANDS.items() if c.halting))
def test_a_bad_halting_value_fails_in_one_line_before_anything_loads(
    command: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse(monkeypatch)
    source = {"calibrate": ["--ckpt", "runs/x", "--budget-macs", "1M"], "predict": [str(SAMPLE)]}
    with pytest.raises(SystemExit) as exit_info:
        main([command, *source.get(command, ["--pretrained"]), "--halting", "foo"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"iamnn {command}: error: argument --halting:") and "'foo'" in err
    if command != "calibrate":  # the valid forms, as models.halting.normalize_halting lists them
        assert all(form in err for form in ("act", "full", "k >= 1", "cascade:")), err


def test_evaluate_halting_foo_is_refused_at_parse_time() -> None:
    """What a user sees: one line, exit 2, before the shipped weights or the dataset are read."""
    import subprocess
    import sys

    probe = (
        "import sys, iamnn.cli\n"
        "try:\n    iamnn.cli.main(['evaluate', '--pretrained', '--halting', 'foo'])\n"
        "except SystemExit as stop:\n"
        "    loaded = [m for m in ('iamnn.weights', 'iamnn.data', 'iamnn.report') if m in sys.modules]\n"
        "    assert not loaded, loaded\n    raise\n"
    )
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert got.returncode == 2 and got.stderr.count("\n") == 1, got.stderr
    assert "halting must be" in got.stderr and "got 'foo'" in got.stderr


def test_predict_takes_halting(capsys: pytest.CaptureFixture) -> None:
    main(["predict", "--halting", "2", "--json", str(SAMPLE)])
    (prediction,) = json.loads(capsys.readouterr().out)["predictions"]
    assert prediction["iterations"] == [2, 2, 2, 2] and prediction["label"] == "Ankle boot"


@pytest.mark.parametrize(
    "argv",
    [["evaluate", "--weights", "w.safetensors", "--pretrained"], ["export", "-o", "x.onnx"],
     ["predict", "--weights", "w.safetensors", "--pretrained", "a.png"],
     ["bench", "--weights", "w.safetensors", "--pretrained"], ["recalibrate", "--halting", "1"]],
)  # fmt: skip
def test_one_model_source_is_checked_in_one_place(
    argv: list[str], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "give one of" in err, err
    assert ("--ckpt RUN" in err) == (argv[0] == "recalibrate")


def test_every_source_option_is_declared_by_the_one_group() -> None:
    for name, command in COMMANDS.items():
        flags = {f for flags, _ in command.arguments for f in flags}
        assert not flags & {"--weights", "--pretrained", "--model", "--halting", "--json", "--test-subset"}, name
    from iamnn.weights import DEFAULT_MODEL

    assert SHIPPED == DEFAULT_MODEL  # named twice so that `iamnn --help` needs no PyTorch


# -- one meaning of --json -----------------------------------------------------------------------
def test_json_takes_a_file_only_when_its_name_ends_in_json() -> None:
    assert json_words(["predict", "--json", "a.png"]) == ["predict", "--json=-", "a.png"]
    assert json_words(["report", "--json", "runs/demo"]) == ["report", "--json=-", "runs/demo"]
    assert json_words(["models", "--json", "iamnn_*"]) == ["models", "--json=-", "iamnn_*"]
    for kept in (["predict", "--json", "out.JSON", "a.png"], ["evaluate", "--json"], ["evaluate", "--json", "-"],
                 ["evaluate", "--json", "--pretrained"], ["evaluate", "--json=notes.txt"]):  # fmt: skip
        assert json_words(kept) == kept


def test_json_means_the_same_in_every_command(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    helps = {}
    for name, parser in _subcommands().items():
        (action,) = [a for a in parser._actions if "--json" in a.option_strings] or [None]
        if action is not None:
            assert (action.nargs, action.const, action.metavar) == ("?", "-", "FILE.json"), name
            helps[name] = action.help.split(" (e.g.")[0]
    assert len(set(helps.values())) == 1, helps
    assert {"models", "profile", "predict", "bench", "evaluate", "report", "frontier"} <= set(helps)
    assert set(helps) == {n for n, c in COMMANDS.items() if c.json is not None}

    main(["models", "iamnn_r18", "--json"])  # bare: the JSON alone, on stdout
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == ["iamnn_r18"]
    main(["models", "iamnn_r18", "--json", str(tmp_path / "m.json")])  # a FILE: the table, and the JSON there
    out = capsys.readouterr().out
    assert "Registered models" in out and f"wrote {tmp_path / 'm.json'}" in out
    assert [r["name"] for r in json.loads((tmp_path / "m.json").read_text())] == ["iamnn_r18"]


def test_handlers_are_imported_only_when_their_command_runs() -> None:
    import importlib

    for name, command in COMMANDS.items():
        module, _, function = command.handler.partition(":")
        assert callable(getattr(importlib.import_module(f"iamnn.subcommands.{module}"), function)), name
