"""The `iamnn` command's help: every subcommand's ends with examples, and the examples parse."""

from __future__ import annotations

import argparse
import shlex

import pytest

from iamnn.cli import EXAMPLES, LIGHTNING_COMMANDS, build_parser, main


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
