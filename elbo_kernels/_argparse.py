"""The command-line conventions every entry point of the package shares (standard library only).

- Flags are spelled with underscores (``--output_dir``, the config key's name); the dashed
  spelling (``--output-dir``) is accepted too, everywhere.
- A mistyped flag is refused by the (sub)command it was meant for, with that command's usage and
  the closest flag it knows: ``unrecognized arguments: --epoch 2 (did you mean --epochs?)``.
- Abbreviations are off: ``--epoch 3`` never silently means ``--epochs 3``.
- Help shows a boolean that may be given bare (``--resume``, ``--resume false``) as a flag.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Dict, Iterable, Optional, Sequence


def spelled(token: str, known: Iterable[str]) -> str:
    """``token`` with its flag name respelled (dashes <-> underscores) when only that spelling is
    known; anything else (values, known flags, unknown flags) unchanged."""
    if not token.startswith("--") or token == "--":
        return token
    name, eq, value = token.partition("=")
    known = set(known)
    if name in known:
        return token
    for other in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
        if other in known:
            return other + eq + value
    return token


def suggestion(flag: str, known: Iterable[str], hints: Optional[Dict[str, str]] = None) -> Optional[str]:
    """The known flag closest to the unknown ``flag`` (``hints`` maps well-known other names,
    e.g. ``--learning_rate`` -> ``--lr``); None when nothing is close."""
    name = flag.partition("=")[0]
    hints = hints or {}
    normal = "--" + name.lstrip("-").replace("-", "_")
    if normal in hints:
        return hints[normal]
    close = difflib.get_close_matches(normal, [k for k in known if k.startswith("--")], n=1, cutoff=0.6)
    return close[0] if close else None


class Parser(argparse.ArgumentParser):
    """ArgumentParser with the package's conventions (module docstring); subcommands added with
    ``add_subparsers`` are Parsers too."""

    def __init__(self, *args, hints: Optional[Dict[str, str]] = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.hints: Dict[str, str] = dict(hints or {})

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        known = list(self._option_string_actions)
        return super().parse_known_args([spelled(a, known) for a in args], namespace)

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # The subcommand that was chosen owns the unknown flags: its usage, its flags.
            owner = getattr(parsed, "_parser", None) or self
            message = f"unrecognized arguments: {' '.join(extras)}"
            flags = [e for e in extras if e.startswith("--") and e != "--"]
            guess = suggestion(flags[0], owner._option_string_actions, owner.hints) if flags else None
            owner.error(message + (f" (did you mean {guess}?)" if guess else ""))
        return parsed


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an optional-value boolean (nargs "?", const True) as a bare flag: ``--resume``."""

    def _format_args(self, action, default_metavar):
        if _is_flag(action):
            return ""
        return super()._format_args(action, default_metavar)

    def _format_action_invocation(self, action):
        if _is_flag(action):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)

    def _format_usage(self, usage, actions, groups, prefix):
        return super()._format_usage(usage, actions, groups, prefix).replace(" ]", "]")


def _is_flag(action: argparse.Action) -> bool:
    return action.option_strings != [] and action.nargs == "?" and action.const is True


def choices_metavar(choices: Iterable) -> str:
    """``{a,b,c}``, as argparse shows choices (None shown as ``none``)."""
    return "{" + ",".join("none" if c is None else str(c) for c in choices) + "}"
