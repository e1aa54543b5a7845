"""YAML loading that remembers the line of every field, so problems can point at it.

Scalars resolve as YAML 1.2 (and torchtune/OmegaConf) read them: ``1e-4`` is a float, and
``1:00:00`` stays the string a SLURM time limit is, not a base-60 integer.

Reading is bounded whatever the text: nesting depth, the number of values, and what aliases
expand to are capped (an alias "bomb" of a few lines is refused, not expanded), and a value
that cannot be constructed (``!!int abc``, ``2026-13-45``) is a problem with its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ck_dagster.experiment.problems import FieldPath, Problem

_INT = re.compile(
    r"^(?:[-+]?0b[01_]+|[-+]?0o?[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
)
_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)


#: deepest nesting of mappings and sequences (an experiment file needs about 6).
MAX_DEPTH = 50
#: most values in a document, aliases expanded: experiment files hold hundreds (a sweep of
#: 2000 runs, about 20 000); the bound keeps reading a file within seconds and 200 MB.
MAX_VALUES = 20_000


#: libyaml's parser when PyYAML has it (a 1 MB file in a fraction of a second; the Python one
#: takes seconds), else PyYAML's own.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """A safe loader with YAML 1.2 numbers (no base-60, exponent floats without a dot), and
    construction errors as YAML errors with the value's position."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            value = node.value if isinstance(node, yaml.ScalarNode) else node.tag
            shown = value if len(value) <= 40 else value[:37] + "..."
            tag = node.tag.rsplit(":", 1)[-1]
            why = f" ({exc})" if isinstance(exc, ValueError) else ""
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"`{shown}` cannot be read as {tag}{why}; quote it to keep it "
                "as text, or correct the value",
                node.start_mark,
            ) from None


class _Bounded(yaml.composer.ComposerError):
    """A document over a reading bound."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(None, None, problem, mark)


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, rx)
        for tag, rx in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}


def add_yaml12_numbers(cls: type) -> None:
    """Make a loader (or dumper) class resolve numbers as YAML 1.2 and OmegaConf do: a dumper
    then quotes the text ``1e-4``, which it would otherwise write bare for OmegaConf to read
    back as a number."""
    cls.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
    cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


add_yaml12_numbers(_Loader)


@dataclass
class LoadedYaml:
    """A parsed document with the line (1-based) of every mapping key and sequence item."""

    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def line_of(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its closest ancestor that the file has."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def load_yaml(text: str) -> LoadedYaml:
    """Parse one YAML document; syntax errors and duplicate keys become problems, not raises."""
    loader = _Loader(text)
    try:
        _check_bounds(text)
        node = loader.get_single_node()
        if node is None:
            return LoadedYaml(data=None)
        _check_expansion(node)
        result = LoadedYaml(data=loader.construct_document(node))
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (NUL, ESC, ...)
        shown = (
            chr(exc.character).encode("unicode_escape").decode("ascii")
            if isinstance(exc.character, int)
            else repr(exc.character)
        )
        return LoadedYaml(
            data=None,
            problems=[
                Problem(
                    (),
                    f"contains the character {shown}, which YAML does not allow",
                    "remove it (write it as an escape inside double quotes if it is meant)",
                    text.count("\n", 0, exc.position) + 1,
                )
            ],
        )
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        bounded = isinstance(exc, _Bounded) or "maximum nesting depth" in problem  # libyaml's
        if bounded and not isinstance(exc, _Bounded):
            problem = f"nested more than {MAX_DEPTH} levels deep"
        fix = (
            "write the values out: experiment files are small"
            if bounded
            else "fix the syntax at that line"
        )
        return LoadedYaml(
            data=None, problems=[Problem((), f"not valid YAML: {problem}", fix, line)]
        )
    finally:
        loader.dispose()
    _index(node, (), result)
    return result


def _check_bounds(text: str) -> None:
    """Refuse a document nested deeper than ``MAX_DEPTH`` or holding more than ``MAX_VALUES``
    values, from its parse events, before any node is built."""
    depth = values = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
            values += 1
            if values > MAX_VALUES:
                raise _Bounded(f"holds more than {MAX_VALUES} values", event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _Bounded(f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than ``MAX_VALUES`` values, or refer to
    a value they are inside. Each node is sized once: linear in the document's size."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known == -1:
            raise _Bounded("an alias refers to a value it is inside", node.start_mark)
        if known is None:
            sizes[id(node)] = -1  # in progress
            total = 1
            for child in _children(node):
                total += size(child)
                if total > MAX_VALUES:
                    raise _Bounded(
                        f"its aliases expand to more than {MAX_VALUES} values", node.start_mark
                    )
            sizes[id(node)] = known = total
        return known

    size(root)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _index(node: yaml.Node, path: FieldPath, result: LoadedYaml) -> None:
    result.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                result.problems.append(
                    Problem(
                        (*path, key),
                        f"duplicate key (first at line {seen[key]})",
                        "keep one; YAML would silently use the last",
                        line,
                    )
                )
            seen[key] = line
            result.lines[(*path, key)] = line
            _index(value_node, (*path, key), result)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index(item, (*path, index), result)
