"""Study file -> plain YAML document, refusing what would silently go wrong (duplicate keys) or blow up
(alias bombs, deep nesting, huge files) with one line that says where.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.problems import SpecError


# Bounds on what a study file may make the loader build. A real study is a few hundred values a few
# levels deep; without bounds, a few lines of aliases (each a list of the one before) expand to 10^8
# values and deep nesting overflows Python's recursion, so every later step (profiles, validation,
# the plan) would eat memory or crash instead of answering.
MAX_FILE_BYTES = 256_000
MAX_DEPTH = 100  # levels of nesting, aliases expanded
MAX_VALUES = 100_000  # keys, values and list items, aliases expanded
MAX_SCALAR_CHARS = 10_000  # one value
MAX_TOTAL_CHARS = 1_000_000  # every value together, aliases expanded


class _TooLarge(yaml.YAMLError):
    """A document past one of the bounds above; `mark` says where, when known."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded(root: yaml.Node) -> None:
    """Size, depth and text of the document as its aliases expand it, without expanding it: each node is
    measured once (an alias is the same node object as its anchor), bottom-up, without recursion."""
    measured: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, depth, characters)
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            parts = [measured[id(child)] for child in _children(node)]
            own = len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            values = min(1 + sum(p[0] for p in parts), MAX_VALUES + 1)
            depth = 1 + max((p[1] for p in parts), default=0)
            chars = min(own + sum(p[2] for p in parts), MAX_TOTAL_CHARS + 1)
            measured[key] = (values, depth, chars)
            on_path.discard(key)
            if values > MAX_VALUES:
                raise _TooLarge(f"the document expands to more than {MAX_VALUES:,} values through its aliases "
                                f"(*name); a study needs far fewer: check its anchors and aliases", node.start_mark)
            if depth > MAX_DEPTH:
                raise _TooLarge(f"the document nests more than {MAX_DEPTH} levels deep once its aliases are "
                                f"expanded", node.start_mark)
            if chars > MAX_TOTAL_CHARS:
                raise _TooLarge(f"the document's values add up to more than {MAX_TOTAL_CHARS:,} characters once "
                                f"its aliases are expanded", node.start_mark)
            continue
        if key in measured:
            continue
        if key in on_path:
            raise _TooLarge("an alias refers to a value that contains it (a loop)", node.start_mark)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in measured)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 insists on `1.0e-4`), refuses duplicate keys
    (a merged `<<: *anchor` key overridden by an explicit one is no duplicate) and stops at the bounds above
    while composing, before anything is built from the document."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # `[[[[...`: stopped while scanning, before the scanner's look-ahead over thousands of open brackets
        if self.flow_level >= MAX_DEPTH:
            raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor: Any) -> Any:
        node = super().compose_scalar_node(anchor)
        if len(node.value) > MAX_SCALAR_CHARS:
            raise _TooLarge(f"a value of {len(node.value):,} characters; at most {MAX_SCALAR_CHARS:,} are "
                            f"accepted", node.start_mark)
        return node

    def compose_document(self) -> Any:
        node = super().compose_document()
        _check_expanded(node)
        return node


MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A key written twice is refused (the later one would silently win). Keys merged in by `<<: *anchor`
    are not checked against the explicit ones: YAML says an explicit key overrides a merged one."""
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            continue  # an unhashable key is reported by PyYAML itself below
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (the later one would silently win)", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)  # merges first, then the explicit keys over them


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_without_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(path: Path, source: str) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SpecError(source, [("", f"{size:,} bytes; a study file is at most {MAX_FILE_BYTES:,}")])
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(source, [("", "file not found")]) from None
    except UnicodeDecodeError as error:
        raise SpecError(source, [("", f"not UTF-8 text (byte {error.start}): save the file as UTF-8")]) from None
    except OSError as error:
        raise SpecError(source, [("", f"cannot read: {error.strerror}")]) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _TooLarge as error:
        where = f"line {error.mark.line + 1}, column {error.mark.column + 1}: " if error.mark else ""
        raise SpecError(source, [("", f"{where}{error.message}")]) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(source, [("", f"{where}YAML syntax error: {problem}")]) from None
