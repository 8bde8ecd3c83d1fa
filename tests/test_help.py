"""Every flag says what it does: `unetkit COMMAND --help` is the first documentation a
newcomer reads, so no option may be left without help, a choice without its meaning, or a
default that is not what happens."""

import argparse
import re

import pytest

from unetkit import __version__
from unetkit.cli import build_parser, main
from unetkit.flags import PLANNED

COMMANDS = {"train", "predict", "evaluate", "export", "plan", "info", "make-demo-data"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def options(name: str) -> list[argparse.Action]:
    return [a for a in subcommands()[name]._actions if not isinstance(a, argparse._HelpAction)]


def help_of(name: str, flag: str) -> str:
    return next(a.help for a in options(name) if flag in a.option_strings)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_of_every_command_has_help(name):
    missing = [a.option_strings or [a.dest] for a in options(name)
               if not a.help or a.help == argparse.SUPPRESS
               or a.help.lstrip("(").startswith("default:")]
    assert not missing, f"unetkit {name}: options without help: {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_choice_comes_with_its_meaning(name):
    for action in options(name):
        meanings = getattr(action, "metavar", None) or ""
        choices = action.choices or (meanings.split("|") if "|" in meanings else [])
        if "PATH" in choices:  # --pretrained true|false|PATH: a value, not a choice
            continue
        for choice in choices:
            assert re.search(rf"^{re.escape(str(choice))}: \S", action.help, re.M), (
                name, action.option_strings, choice)


def test_the_top_level_help_lists_every_command_with_a_line(capsys):
    assert set(subcommands()) == COMMANDS
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s+\w", text, re.M) or re.search(
            rf"^\s+{name}\n\s+\w", text, re.M), name


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"unetkit {__version__}"


def test_defaults_say_what_happens():
    time = help_of("train", "--time")
    assert "10m" in time and "default: none" not in time  # a bare `train` plans 10 minutes
    assert "a planned run chooses it" in help_of("train", "--lr")
    assert "default: 0.0001" in help_of("train", "--lr")
    # evaluate writes next to the run, not inside the checkpoint folder (replaced by saves)
    assert "RUN/evaluation.csv" in help_of("evaluate", "--csv")
    assert "CKPT/evaluation.csv" not in help_of("evaluate", "--csv")
    for flag in ("--noise-std", "--blur-prob", "--spatial-dims", "--normalize",
                 "--precision", "--task", "--demo"):
        assert not help_of("train", flag).startswith("("), flag


def test_path_flags_name_a_path():
    metavars = {a.option_strings[0]: a.metavar for a in options("train") if a.option_strings}
    assert metavars["--data"] == "DIR" and metavars["--out"] == "DIR"
    assert metavars["--config"] == "FILE"
    assert not any(m == "STR" for flag, m in metavars.items() if flag in ("--data", "--out"))


def test_planned_flags_are_the_plans_decisions():
    import inspect

    from unetkit import plan

    source = inspect.getsource(plan)
    decided = set(re.findall(r'p\.decide\("(\w+)\.(\w+)"', source))
    registered = {"layout": {"aligned": 1.0, "mirror_lr": 1.0, "mirror_ud": 1.0}}
    decided |= {("augment", name) for name in plan.augmentation_rule(registered, 30)[0]}
    decided.discard(("train", "time"))  # the budget itself: --time's own help says so
    assert decided == PLANNED
