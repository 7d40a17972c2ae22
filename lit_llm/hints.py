"""One-line errors for misspelt config keys, naming the nearest valid key (`lit-llm fit`, `lit-llm prepare`).

jsonargparse reports an unknown key inside a nested error tree (one level per class it tried) and prints the whole
usage first. `key_error` reads the tree and returns one line per unknown key: its owner class and the nearest valid
key, searched one level down too, so a key under the wrong parent names the right one
(`--model.init_args.config.n_layers` -> `backbone.n_layer`). Imports nothing from the package, so every parser can
use it without an import circle.
"""

import difflib
import inspect
import re
import sys
import typing
from collections.abc import Callable

CUTOFF = 0.5  # difflib similarity below which nothing is "near"


def class_of(class_path: str) -> type | None:
    """The class named by an import path, None when it cannot be imported."""
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(__import__(module_name, fromlist=[name]), name)
    except (ImportError, AttributeError, ValueError):
        return None


def parameters(cls: type | None) -> dict[str, type | None]:
    """A class's constructor parameters, each with the class its value is configured as (a dataclass or another
    class with parameters; None for plain values), from the type hints."""
    if cls is None:
        return {}
    try:
        names = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        hints = typing.get_type_hints(cls.__init__)
    except (ValueError, TypeError, NameError):
        return {}
    out = {}
    for name in names:
        options = typing.get_args(hints.get(name)) or (hints.get(name),)
        nested = [t for t in options if isinstance(t, type) and t.__module__ not in ("builtins", "typing")]
        out[name] = nested[0] if nested else None
    return out


def nearest_key(cls: type | None, key: str) -> str | None:
    """The valid key of `cls` nearest to a dotted `key`: among its parameters and their parameters (one level),
    preferring a match of the key's last part under any parent when its first part is no parameter."""
    params = parameters(cls)
    head, _, rest = key.partition(".")
    if rest and params.get(head) is not None:  # a right parent: look inside it
        inner = nearest_key(params[head], rest)
        return f"{head}.{inner}" if inner else None
    if not rest:
        close = difflib.get_close_matches(key, list(params), n=1, cutoff=CUTOFF)
        return close[0] if close else None
    leaves = {f"{name}.{leaf}": leaf for name, sub in params.items() if sub for leaf in parameters(sub)}
    by_leaf = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(dict.fromkeys(leaves.values())), n=1,
                                        cutoff=CUTOFF)
    if by_leaf:
        return next(path for path, leaf in leaves.items() if leaf == by_leaf[0])
    close = difflib.get_close_matches(key, [*params, *leaves], n=1, cutoff=CUTOFF)
    return close[0] if close else None


def unknown_key_hints(message: str, keys_of: Callable[[str], list[str]]) -> list[str]:
    """One "unknown key" line per unknown key that a jsonargparse error message names, with the nearest valid key.

    Args:
        message: jsonargparse's error message (the nested tree of what it tried).
        keys_of: Option names of the parser an unknown top-level option was given to.
    """
    hints, owner = [], None
    for line in message.splitlines():
        if m := re.search(r"class_path '([\w.]+)'", line):
            owner = m.group(1)
        m = re.search(r"Option '([\w.]+)' is not accepted|unrecognized arguments: --([\w.]+)|"
                      r"does not accept option '([\w.]+)'", line, flags=re.IGNORECASE)
        if not m:
            continue
        key = next(g for g in m.groups() if g)
        if owner and m.group(3) is None:
            close = nearest_key(class_of(owner), key)
            valid = ", ".join(parameters(class_of(owner)))
            hint = f"; did you mean '{close}'?" if close else f"; valid keys: {valid}"
            hints.append(f"unknown key '{key}' of {owner}{hint}")
        else:
            close = difflib.get_close_matches(key, keys_of(key), n=1, cutoff=CUTOFF)
            hints.append(f"unknown key '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
    return list(dict.fromkeys(hints))


def exit_with_error(prog: str, message: str, keys_of: Callable[[str], list[str]]) -> typing.NoReturn:
    """Print a parser error as one line (the unknown key and its nearest valid one when that is what it is; else
    jsonargparse's message), without the usage, and exit with status 2 as argparse does."""
    hints = unknown_key_hints(message, keys_of)
    text = "\n".join(f"{prog}: error: {hint}" for hint in hints) if hints else f"{prog}: error: {message}"
    sys.stderr.write(f"{text}\n({prog} --help lists every option)\n")
    sys.exit(2)
