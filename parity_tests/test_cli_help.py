"""Every `python -m` entry point's `--help`: it runs, lists every mode and flag, and states each default once, right."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from parity_tests import report, sharded_step
from r34_flax import convert, demo
from train import bench, bench_pipeline, bench_preemption, loop_flax, loop_torch
from train.cli import build_parser
from train.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("r34", "r34_flax", "r34_torch", "train", "parity_tests")

# module run by `python -m` -> (its main, the parsers whose every flag its --help must show, argv of that help)
ENTRY_POINTS: dict[str, tuple[Callable[[list[str]], int], Callable[[], list[argparse.ArgumentParser]], list[str]]] = {
    "train.flax": (loop_flax.main, lambda: [build_parser("python -m train.flax", "", flax=True)], ["--help"]),
    "train.torch": (loop_torch.main, lambda: [build_parser("python -m train.torch", "", flax=False)], ["--help"]),
    # One --help shows both modes: the model benchmark's flags and, in its epilog, the --pipeline mode's.
    "train.bench": (bench.main, lambda: [bench.build_parser(), bench_pipeline.build_parser()], ["--help"]),
    "train.bench_preemption": (bench_preemption.main, lambda: [bench_preemption.build_parser()], ["--help"]),
    "r34_flax.convert": (convert.main, lambda: [convert.build_parser()], ["--help"]),
    "r34_flax.demo": (demo.main, lambda: [demo.build_parser()], ["--help"]),
    "parity_tests.report": (report.main, lambda: [report.build_parser()], ["--help"]),
    "parity_tests.sharded_step": (sharded_step.main, lambda: [sharded_step.build_parser()], ["--help"]),
    "train.data.synthetic": (synthetic.main, lambda: [synthetic.build_parser()], ["--help"]),
}
# Modes reached by a flag or a command, each with its own --help.
MODES = {
    "train.bench --pipeline": (bench.main, lambda: [bench_pipeline.build_parser()], ["--pipeline", "--help"]),
    **{f"r34_flax.convert {name}": (convert.main, lambda name=name: [subcommands(convert.build_parser())[name]],
                                    [name, "--help"]) for name in ("to-flax", "to-torch", "inspect")},
}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_entry_point_is_walked() -> None:
    """A module with a `__main__` block is an entry point; each must be in ENTRY_POINTS (so a new CLI is checked)."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if re.search(r'(?m)^if __name__ == "__main__":', path.read_text()):
                found.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert found == set(ENTRY_POINTS), found ^ set(ENTRY_POINTS)


def help_text(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out


def option_entry(text: str, option: str) -> str:
    """The help entry of `option` in a --help text: from its listing to the next listed option."""
    listing = rf"(?m)^  (?=-)[^\n]*?(?<![\w-]){re.escape(option)}(?![\w-])"  # its line of option strings
    match = re.search(listing + r".*?(?=^  -|^\S|\Z)", text, re.S)
    assert match, f"{option} not listed"
    return " ".join(match.group(0).split())


@pytest.mark.parametrize("name", [*ENTRY_POINTS, *MODES])
def test_help_lists_every_flag_with_its_default_once(name: str, capsys: pytest.CaptureFixture) -> None:
    main, parsers, argv = {**ENTRY_POINTS, **MODES}[name]
    text = help_text(main, argv, capsys)
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    parsers = parsers()
    starts = [text.index(f"usage: {parser.prog} [") for parser in parsers]
    for parser, start, end in zip(parsers, starts, [*starts[1:], len(text)]):
        section = text[start:end]  # each parser's own part of the help (a second mode's is in the epilog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
            if not action.option_strings:  # positional: named in the usage and listed
                assert action.dest in section or (action.metavar and action.metavar in section), action.dest
                continue
            entry = option_entry(section, action.option_strings[-1])
            assert entry.count("default") <= 1, f"{name}: {entry}"
            if action.default not in (None, argparse.SUPPRESS) and action.nargs != 0 and "default" not in action.help:
                assert f"(default: {action.default})" in entry, f"{name}: {entry}"
    if name == "r34_flax.convert":  # the top-level help names every command with its flags
        for command, sub in subcommands(convert.build_parser()).items():
            assert f"python -m r34_flax.convert {command}" in text
            assert all(o in text for a in sub._actions for o in a.option_strings if o != "-h")
