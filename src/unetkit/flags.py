"""``unetkit train``'s flags, generated from the config dataclasses, and back: the flags
given (and a ``--config`` file) into a :class:`~unetkit.config.Config`.

Each flag's help is the comment beside its field in config.py (or, without one, the
comment lines right above it), each choice's meaning is declared with the choice
(``setting("same", choices={"same": "...", ...})``), so the documentation lives in one
place and flags and settings never drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import textwrap
import typing
from pathlib import Path

from .config import SECTIONS, Config, flag_name

# Set from the data (image channels, number of classes), not by the user.
DERIVED = {("model", "in_channels"), ("model", "out_channels"), ("model", "spacing"),
           ("data", "context")}
# What a planned run (a bare `unetkit train`, or --time) chooses unless the flag is given
# (unetkit.plan's decisions; tests/test_help.py keeps the two in step).
PLANNED = {("data", "patch_size"), ("model", "depth"), ("train", "batch_size"),
           ("model", "features"), ("optim", "lr"), ("optim", "schedule"),
           ("train", "steps_per_epoch"), ("data", "num_workers"), ("data", "weight_map"),
           ("data", "normalize"),
           *(("augment", name) for name in ("rotate_deg", "scale", "elastic", "brightness",
                                            "contrast", "gamma", "noise_std", "blur_prob",
                                            "rot90", "flip"))}
# Flags that name a file or folder.
PATHS = {("data", "root"): "DIR", ("train", "out"): "DIR"}


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that a help text's own line breaks are kept (one line
    per choice), each line wrapped on its own."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return [wrapped for line in text.splitlines()
                for wrapped in (textwrap.wrap(line, width) or [""])]


def _flag(section: str, name: str) -> str:
    return flag_name(section, name)[2:]


def shown(value) -> str:
    """A default as a user types it: none, true, 0.0001, 0.85 1.15."""
    if value is None or value == {} or value == ():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " ".join(shown(v) for v in value)
    return str(value)


def field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` beside each field in config.py, else the comment lines right
    above it: the flags' help texts."""
    comments, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"\s+(\w+): [^#=]+=[^#]*?(?:#\s*(.+))?$", line)
        if match:
            beside = match.group(2)
            text = beside.strip() if beside else " ".join(above)
            if text:
                comments[match.group(1)] = text
        above = []
    return comments


def field_help(section: str, f: dataclasses.Field, default, note: str) -> str:
    """A flag's help: what it does, its default (or what happens without it), the range
    it accepts, and one line per choice with its meaning."""
    accepts = f.metadata.get("accepts")
    meanings = f.metadata.get("meanings", {})
    parts = []
    if not (default is None and "none" in note.lower()):  # the note says what none means
        parts.append(f"default: {shown(default)}")
    if accepts is not None and not meanings and accepts.describe():
        parts.append(accepts.describe())
    if (section, f.name) in PLANNED:
        parts.append("a planned run chooses it")
    text = f"{note} ({'; '.join(parts)})" if parts else note
    for choice, meaning in meanings.items():
        text += f"\n{shown(choice)}: {meaning}"
    return text.replace("%", "%%")


def choices_help(cls: type, name: str, intro: str) -> str:
    """``intro``, then one line per choice of setting ``name`` of ``cls`` with its meaning
    (for a hand-written flag that takes a setting's choices)."""
    meanings = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["meanings"]
    return "\n".join([intro, *(f"{shown(c)}: {m}" for c, m in meanings.items())])


def _parse_bool_or_path(text: str):
    low = text.lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0", "none"):
        return False
    return text


def _optional(parse):
    def inner(text: str):
        return None if text.lower() == "none" else parse(text)

    inner.__name__ = getattr(parse, "__name__", "value")
    return inner


def argument_type(parse, optional: bool):
    """``parse`` as an argparse type: its ValueError becomes argparse's one-line error."""
    def inner(text: str):
        if optional and text.lower() == "none":
            return None
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err

    return inner


def _metavar(section: str, f: dataclasses.Field, base) -> str:
    meanings = f.metadata.get("meanings")
    if meanings:
        return "|".join(shown(choice) for choice in meanings)
    if (section, f.name) in PATHS:
        return PATHS[section, f.name]
    return base.__name__.upper()


def _add_field(group, section: str, f: dataclasses.Field, hint, default, note: str) -> None:
    flag = "--" + _flag(section, f.name)
    dest = f"{section}.{f.name}"
    helptext = field_help(section, f, default, note)
    args = typing.get_args(hint)
    optional = type(None) in args
    inner = [a for a in args if a is not type(None)] if args else [hint]
    if typing.get_origin(hint) in (tuple, dict):
        inner = [hint]
    base = inner[0] if len(inner) == 1 else None
    parse = f.metadata.get("parse")
    if parse is not None:  # a text form of its own, e.g. a duration ("10m")
        group.add_argument(flag, dest=dest, type=argument_type(parse, optional),
                           default=None, metavar=f.name.upper(), help=helptext)
    elif base is bool:
        group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                           default=None, help=helptext)
    elif set(inner) == {bool, str}:
        group.add_argument(flag, dest=dest, type=_parse_bool_or_path, default=None,
                           metavar="true|false|PATH", help=helptext)
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        group.add_argument(flag, dest=dest, type=item, nargs="+", default=None, help=helptext,
                           metavar=item.__name__.upper())
    elif typing.get_origin(base) is dict or base is dict:
        group.add_argument(flag, dest=dest, type=json.loads, default=None, metavar="JSON",
                           help=helptext + ' (JSON, e.g. \'{"255,0,0": 1}\')')
    elif base in (int, float, str):
        group.add_argument(flag, dest=dest, type=_optional(base) if optional else base,
                           default=None, metavar=_metavar(section, f, base), help=helptext
                           + (" ('none' to unset)" if optional and "none" not in helptext.lower()
                              else ""))
    else:  # pragma: no cover - a new field type must be handled above
        raise TypeError(f"no flag type for {dest}: {hint}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for section in SECTIONS:
        cls = type(getattr(defaults, section))
        hints = typing.get_type_hints(cls)
        notes = field_comments(cls)
        group = parser.add_argument_group(f"{section} settings")
        for f in dataclasses.fields(cls):
            if (section, f.name) in DERIVED:
                continue
            _add_field(group, section, f, hints[f.name],
                       getattr(getattr(defaults, section), f.name), notes.get(f.name, ""))


# -- flags (and a config file) into a Config -----------------------------------------
def given_settings(args: argparse.Namespace) -> dict:
    """The settings the user gave: the --config file's, then the flags on top."""
    raw: dict = {}
    if getattr(args, "config", None):
        raw = read_config_file(args.config)
    for key, value in vars(args).items():
        if "." in key and value is not None:
            section, name = key.split(".", 1)
            raw.setdefault(section, {})[name] = value
    return raw


def config_from_args(args: argparse.Namespace) -> Config:
    """Defaults, then the --config file, then the flags given on the command line."""
    return Config.from_dict(given_settings(args))


def explicit_settings(args: argparse.Namespace) -> frozenset[str]:
    """"section.name" of every setting the user gave (a plan keeps these as given)."""
    return frozenset(f"{section}.{name}" for section, values in given_settings(args).items()
                     if isinstance(values, dict) for name in values)


def read_config_file(path: str) -> dict:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: cannot read it ({err})") from err
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as err:
        raise ValueError(f"{path}: cannot parse config file: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections {SECTIONS}")
    return data
