"""YAML from someone else, read with bounded work: config files (`flood train`, and a
saved run's config.yaml on `--resume`) and run folders (`flood compare`) go through
:func:`load`.

It is PyYAML's safe loader (plain data, never objects) with these rules on top:

* aliases may repeat at most ``MAX_ALIAS_VALUES`` values in all: ``*name`` stands for
  a whole value, and a chain of aliases to lists of aliases (a "billion laughs") would
  otherwise expand a 1 kB file into 10⁹ values for whatever walks it next;
* a recursive alias (a value that contains itself, ``&a [*a]``) is refused;
* a key that appears twice in one mapping is refused, with both lines (YAML would keep
  the last one silently); a key that overrides one merged in with ``<<`` is fine;
* nesting deeper than ``MAX_DEPTH`` levels is refused;
* ``1e-5`` reads as a float (YAML 1.1 needs a dot: ``1.0e-5``);
* a value that looks like a date, number or boolean but is none (``2001-13-45``,
  ``!!int abc``) is a YAML error that says where, not a Python exception.

The document is composed first (a graph of at most as many nodes as the text has
values), then checked, then built into Python objects: the checks never walk an
expanded value.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

from flood_cli.core.errors import shown, shown_repr

# Values that aliases may add to a document, in all (a config has about a hundred).
MAX_ALIAS_VALUES = 10_000
# Levels of nested lists and mappings (a config has three).
MAX_DEPTH = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"
_STR_TAG = "tag:yaml.org,2002:str"


class RefusedYaml(yaml.YAMLError):
    """Valid YAML that flood does not read: ``problem`` says what and where, ``fix`` how
    to change the file."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix


class TooDeep(yaml.YAMLError):
    """Nested past what the loader can walk; a YAML error like a syntax error."""

    def __init__(self, mark: yaml.Mark | None = None):
        self.problem = f"the document is nested too deeply to read (more than {MAX_DEPTH} levels)"
        self.problem_mark = mark
        super().__init__(self.problem)


def _where(mark: yaml.Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


class _Constructor(SafeConstructor):
    def __init__(self) -> None:
        super().__init__()
        self.mapping_paths: dict[int, str] = {}  # id(mapping node) -> dotted key, set by load()
        self._keys_checked: set[int] = set()

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        # SafeConstructor's constructors let plain Python errors out for values that look
        # like a date, int, float or bool but are none (2001-13-45, `!!int abc`, `!!bool
        # maybe`): make them YAML errors that name the value and where it is.
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # ValueError, KeyError (`!!bool maybe`), AttributeError (`!!timestamp x`)…
            value = shown_repr(node.value) if isinstance(node, ScalarNode) else node.tag
            reason = shown(str(exc)) if isinstance(exc, ValueError) else f"not a valid {node.tag.rsplit(':', 1)[-1]}"
            raise ConstructorError(None, None, f"cannot read the value {value} ({reason})", node.start_mark) from None

    def flatten_mapping(self, node: MappingNode) -> None:
        # Called on every mapping before its keys are read (and on mappings merged in with
        # `<<`), and it rewrites node.value with the merged keys: check the keys as written.
        if id(node) not in self._keys_checked:
            self._keys_checked.add(id(node))
            self._refuse_duplicate_keys(node)
        super().flatten_mapping(node)

    def _refuse_duplicate_keys(self, node: MappingNode) -> None:
        first: dict[Any, ScalarNode] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag in (_MERGE_TAG, _VALUE_TAG):
                continue  # a list or mapping as a key is refused by SafeConstructor itself
            key = key_node.value if key_node.tag == _STR_TAG else self.construct_object(key_node)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # unhashable: SafeConstructor says so next
                continue
            if earlier is key_node:
                continue
            parent = self.mapping_paths.get(id(node), "")
            name = shown(f"{parent}.{key}" if parent else str(key))
            lines = earlier.start_mark.line + 1, key_node.start_mark.line + 1
            where = f"lines {lines[0]} and {lines[1]}" if lines[0] != lines[1] else f"both on line {lines[0]}"
            raise RefusedYaml(f"key '{name}' appears twice ({where})", "keep one")


class _Resolver(Resolver):
    pass


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _Loader(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Constructor, _Resolver):
    """Pure Python: its error messages (marks, wording) are what config errors show."""

    def __init__(self, stream: str):
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)


_FastLoader: type | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _CLoader(yaml.cyaml.CParser, _Constructor, _Resolver):  # type: ignore[name-defined]
        """libyaml's parser and composer (about 10x faster), the same checks and constructor."""

        def __init__(self, stream: str):
            yaml.cyaml.CParser.__init__(self, stream)  # type: ignore[attr-defined]
            _Constructor.__init__(self)
            _Resolver.__init__(self)

    _FastLoader = _CLoader


def load(text: str, fast: bool = False) -> Any:
    """The document in ``text`` as plain Python data (None for an empty one).

    Raises a ``yaml.YAMLError``: a syntax error as PyYAML reports it, :class:`TooDeep`,
    or :class:`RefusedYaml` for aliases that expand too far, a recursive alias or a
    duplicate key. ``fast`` uses libyaml where it is installed (its messages differ).
    """
    loader_class = _FastLoader if fast and _FastLoader is not None else _Loader
    loader = loader_class(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:  # the pure-Python composer recurses once per level
            raise TooDeep() from None
        if node is None:
            return None
        loader.mapping_paths = check_node_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def check_node_graph(root: Node) -> dict[int, str]:
    """Refuse recursive aliases, aliases that repeat more than MAX_ALIAS_VALUES values,
    and nesting past MAX_DEPTH levels once aliases are expanded; each node is walked
    once (an alias is a second path to a node already composed). Returns each mapping
    node's dotted key, for messages."""
    paths: dict[int, str] = {id(root): ""}
    if isinstance(root, ScalarNode):
        return paths
    sizes: dict[int, int] = {}  # finished lists and mappings: how many values each stands for, expanded
    heights: dict[int, int] = {}  # and how many levels deep each goes, expanded
    on_path: set[int] = set()
    scalars_seen: set[int] = set()
    repeated = 0
    # (False, node, the list or mapping that holds it) to walk a node; (True, node, its
    # list and mapping children, its number of scalar children) once they are walked.
    stack: list[tuple[Any, ...]] = [(False, root, None)]
    while stack:
        entry = stack.pop()
        node = entry[1]
        key = id(node)
        if entry[0]:
            on_path.discard(key)
            size, height = 1 + entry[3], 2 if entry[3] else 1
            for child in entry[2]:
                size += sizes[id(child)]
                height = max(height, 1 + heights[id(child)])
            if height > MAX_DEPTH:
                raise TooDeep(node.start_mark)
            sizes[key], heights[key] = size, height
            continue
        if key in sizes:  # a second path to a finished node: an alias repeats it
            repeated += sizes[key]
            if repeated > MAX_ALIAS_VALUES:
                raise _too_many_repeats(entry[2] or node)
            continue
        if key in on_path:
            raise RefusedYaml(
                f"recursive YAML alias at {_where((entry[2] or node).start_mark)} (a value that contains itself)",
                "replace the alias with a plain value",
            )
        on_path.add(key)
        if isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
            prefix = paths.get(key, "")
            for key_node, value_node in node.value:
                if isinstance(value_node, MappingNode) and isinstance(key_node, ScalarNode):
                    paths.setdefault(id(value_node), f"{prefix}.{key_node.value}" if prefix else key_node.value)
        else:
            children = node.value
        containers = []
        scalars = 0
        for child in children:
            if isinstance(child, ScalarNode):
                scalars += 1
                if id(child) in scalars_seen:  # an alias to a scalar
                    repeated += 1
                    if repeated > MAX_ALIAS_VALUES:
                        raise _too_many_repeats(node)
                else:
                    scalars_seen.add(id(child))
            else:
                containers.append(child)
        stack.append((True, node, containers, scalars))
        stack.extend((False, child, node) for child in reversed(containers))
    return paths


def _too_many_repeats(holder: Node) -> RefusedYaml:
    """Where an alias was met: the start of the list or mapping that holds it."""
    return RefusedYaml(
        f"YAML aliases repeat more than {MAX_ALIAS_VALUES} values (seen at {_where(holder.start_mark)})",
        "write the values out, or use fewer aliases",
    )
