"""Reading spec files: YAML with line numbers, `extends:` chains, `--set` overrides, one-line errors.

Each file is parsed into plain data plus a map from field path to (file, line), so that an error
found by validation after merging an extends chain still points at the line that wrote the value.

Merge rule: mappings merge key by key, everything else is replaced. A mapping whose `kind` differs
from the base's `kind` replaces the base's mapping whole (switching `position.kind` from rope to
alibi must not drag `theta` along).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from archc.errors import SpecError, UserError, one_line
from archc.files import kind_of, read_bytes, stat_path
from archc.spec import OptimizerKind, PositionKind, ScheduleKind, Spec

Path_ = tuple[str, ...]
LineMap = dict[Path_, tuple[str, int]]


# libyaml's parser when present (about 100x faster to compose than the pure-Python one; same nodes, marks).
_SafeBase = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeBase):  # type: ignore[valid-type,misc]
    """SafeLoader that keeps each scalar's text for floats like 1e-5 (YAML 1.1 reads them as strings)."""


class _PyLoader(yaml.SafeLoader):
    """_Loader's pure-Python twin, for text that could nest deeply (_compose): libyaml's composer recurses in C
    with no depth check, so 50000 nested '[' (a 100 KB file, or one --set value) crashed the process with a
    segmentation fault; the Python composer stops at the recursion limit (RecursionError: one line)."""


def _replace_resolver(tag: str, pattern: str, first: str) -> None:
    """Both loaders read `tag` by `pattern` (re.X) alone, in place of YAML 1.1's rule for it."""
    import re

    for cls in (_Loader, _PyLoader):
        cls.yaml_implicit_resolvers = {c: [(t, rx) for t, rx in rules if t != tag] for c, rules in cls.yaml_implicit_resolvers.items()}
        cls.add_implicit_resolver(tag, re.compile(pattern, re.X), list(first))


# YAML 1.1 only reads floats with a dot and a signed exponent; published configs write 1e-5 and 1.0e-05. This rule
# replaces YAML 1.1's float rule, which also read colons as base 60 (theta: 2:46:40.0 was 10000.0); every other
# float YAML 1.1 reads, this rule reads the same. Base-60 text stays a string, which a float field refuses.
_replace_resolver("tag:yaml.org,2002:float",
                  r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", "-+0123456789.")

# Integers as written: YAML 1.1 also reads a leading zero as octal (n_layers: 012 was 10 layers) and colons as base 60
# (n_layers: 1:00 was 60). Such text stays a string, which an integer field refuses in one line
# (tests/hostile/test_hostile_yaml_ints.py). Decimal (with _), 0x and 0b integers read as before.
_replace_resolver("tag:yaml.org,2002:int", r"^(?:[-+]?0b[0-1_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$", "-+0123456789")

# Every level of YAML nesting needs one of these characters ('[', '{', a block entry's '-', a value's ':', an
# explicit key's '?'), so text with fewer of them cannot nest deeper than that. libyaml's composer ran 20000
# levels on an 8 MB stack and crashed at 50000; under this bound it runs (library specs hold under 100).
_C_SAFE_STRUCTURE = 2000


# A spec is a few hundred values. Aliases let a small file expand into a huge tree (9 levels of 9
# aliases each is 9^9 values: "billion laughs"), and an alias inside its own anchor is a cycle; both
# are refused while the tree is built, long before memory grows.
MAX_NODES = 100_000
MAX_SPEC_BYTES = 4 * 2**20  # the largest library spec is a few KB
MAX_EXTENDS = 64  # files in one extends chain


class _Budget:
    """Values built so far from one document, shared by the whole walk."""

    def __init__(self, file: str):
        self.file, self.left = file, MAX_NODES

    def spend(self, node: yaml.Node) -> None:
        self.left -= 1
        if self.left < 0:
            raise SpecError(f"the YAML expands to more than {MAX_NODES} values (aliases that repeat aliases?); "
                            "write the values out or use fewer aliases", self.file, node.start_mark.line + 1)


def _construct(node: yaml.Node, file: str, path: Path_, lines: LineMap, loader: _Loader,
               budget: _Budget | None = None, open_: frozenset = frozenset()) -> Any:
    """Plain data from a composed node, recording each path's line; `loader` builds the scalars
    (one per file: its constructor caches by node, and nodes are not shared). `budget` bounds the
    expanded size; `open_` holds the ids of the collections being built above (an alias back to one
    of them is a cycle)."""
    budget = budget or _Budget(file)
    budget.spend(node)
    lines[path] = (file, node.start_mark.line + 1)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if id(node) in open_:
            raise SpecError("a YAML alias refers to a value that contains it (a cycle); remove the alias",
                            file, node.start_mark.line + 1, ".".join(path) or None)
        open_ = open_ | {id(node)}
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError("keys must be plain names, not a list or mapping (a YAML complex key `? ...`)",
                                file, key_node.start_mark.line + 1, ".".join(path) or None)
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` was 'could not determine a constructor ...'
                raise SpecError("YAML merge keys (`<<: *anchor`) are not read in a spec; write the keys out, or put the "
                                "shared settings in a base spec and use `extends`", file, key_node.start_mark.line + 1,
                                ".".join(path) or None)
            key = loader.construct_object(key_node)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise SpecError(f"keys must be plain names, got {key_node.value!r}", file, key_node.start_mark.line + 1)
            key = str(key)
            if key in out:
                raise SpecError(f"key '{key}' appears twice", file, key_node.start_mark.line + 1, ".".join(path + (key,)))
            out[key] = _construct(value_node, file, path + (key,), lines, loader, budget, open_)
            lines[path + (key,)] = (file, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, file, path + (str(i),), lines, loader, budget, open_) for i, v in enumerate(node.value)]
    return loader.construct_object(node)


def _compose(text: str, shown: str) -> yaml.Node | None:
    """One YAML document as nodes (aliases stay shared nodes, nothing is expanded yet), with every
    parse failure as a SpecError naming `shown`."""
    structure = sum(text.count(c) for c in "[{-:?")
    try:
        return yaml.compose(text, Loader=_Loader if structure < _C_SAFE_STRUCTURE else _PyLoader)
    except RecursionError:
        raise SpecError("YAML nested too deeply", shown) from None
    except yaml.reader.ReaderError as e:  # a control character (NUL, ...) that YAML does not allow
        line = text[: e.position].count("\n") + 1
        code = e.character if isinstance(e.character, int) else ord(e.character)
        raise SpecError(f"character U+{code:04X} is not allowed in YAML; remove it", shown, line) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        if mark and _tab_at(text, mark):
            raise SpecError("a tab character; YAML indents with spaces only, so replace the tab "
                            "with spaces", shown, line) from None
        raise SpecError(f"YAML syntax error: {e.problem or e.context}", shown, line) from None
    except yaml.YAMLError as e:
        raise SpecError(f"YAML error: {e}", shown) from None


def _build(node: yaml.Node, shown: str, lines: LineMap) -> Any:
    """`_construct` with YAML's own value errors as a SpecError naming `shown`."""
    try:
        return _construct(node, shown, (), lines, _Loader(""))
    except RecursionError:
        raise SpecError("YAML nested too deeply", shown) from None
    except yaml.MarkedYAMLError as e:  # e.g. an unknown tag (!!python/object) or a bad !!int
        mark = e.problem_mark or e.context_mark
        raise SpecError(f"YAML error: {e.problem or e.context}", shown, mark.line + 1 if mark else None) from None
    except ValueError as e:
        if "integer string conversion" in str(e):  # Python's 4300-digit cap; its advice (set_int_max_str_digits) is not the user's
            raise SpecError("an integer of more than 4300 digits, far past any size archc allows (see `archc schema`); write the size you mean", shown) from None
        raise SpecError(f"YAML value cannot be read: {e}", shown) from None
    except (yaml.YAMLError, TypeError, OverflowError) as e:  # a tagged scalar that does not parse
        raise SpecError(f"YAML value cannot be read: {e}", shown) from None


def read_yaml(path: Path) -> tuple[dict, LineMap]:
    """Parse one file into (data, line map), with every failure as a SpecError naming the file."""
    shown = _display(path)
    try:  # a regular file only: a FIFO or /dev/zero is refused before reading
        raw = read_bytes(path, shown, limit=MAX_SPEC_BYTES)
    except UserError as e:
        # the line names the file once: str(e) holds it escaped by one_line (a name with an undecodable byte,
        # 'bad\\udcff.yaml', differs from `shown` there), and SpecError adds `shown` again
        raise SpecError(str(e).removeprefix(f"{shown}: ").removeprefix(one_line(f"{shown}: ")), shown) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise SpecError(f"not UTF-8 text (byte {e.start}); save the file as UTF-8", shown, line) from None
    node = _compose(text, shown)
    if node is None:
        raise SpecError("empty file; a spec needs at least name, sizes and attention.n_heads (see `archc new`)", shown)
    if not isinstance(node, yaml.MappingNode):
        raise SpecError("a spec must be a mapping of fields (key: value), not a list or a scalar", shown, node.start_mark.line + 1)
    lines: LineMap = {}
    data = _build(node, shown, lines)
    return data, lines


def _tab_at(text: str, mark) -> bool:
    """Whether PyYAML stopped at a tab (its message, "found character that cannot start any
    token", does not say which character)."""
    lines = text.splitlines()
    if not 0 <= mark.line < len(lines):
        return False
    row = lines[mark.line]
    return (0 <= mark.column < len(row) and row[mark.column] == "\t") or "\t" in row[: len(row) - len(row.lstrip())]


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
        return rel if not rel.startswith("../..") else str(path)
    except ValueError:
        return str(path)


# Pairs of fields that state one fact twice (kv_heads and sharing; rotary_dim and rotary_fraction).
# An override of one drops the other inherited from the base, so `--set attention.kv_heads=8` works
# on a spec that wrote `sharing: mha`; written together at the same level, both stay and must agree.
_COUPLED = {
    ("attention", "kv_heads"): "sharing",
    ("attention", "sharing"): "kv_heads",
    ("position", "rotary_dim"): "rotary_fraction",
    ("position", "rotary_fraction"): "rotary_dim",
}


def merge(base: dict, over: dict, base_lines: LineMap, over_lines: LineMap, prefix: Path_ = ()) -> dict:
    out = dict(base)
    for key, value in over.items():
        other = _COUPLED.get((prefix[-1] if prefix else "", key))
        if other and other not in over and other in out:
            del out[other]
            for p in [p for p in base_lines if p[: len(prefix) + 1] == prefix + (other,)]:
                del base_lines[p]
        here = prefix + (key,)
        old = out.get(key)
        replace_whole = (
            not isinstance(old, dict)
            or not isinstance(value, dict)
            or ("kind" in value and "kind" in old and value["kind"] != old["kind"])
        )
        if replace_whole:
            out[key] = value
            for p in [p for p in base_lines if p[: len(here)] == here]:
                del base_lines[p]
        else:
            out[key] = merge(old, value, base_lines, over_lines, here)
    for p, v in over_lines.items():
        if p[: len(prefix)] == prefix:
            base_lines[p] = v
    return out


LABELS_NOT_INHERITED = ("reference", "description")


def _resolve_extends(path: Path, seen: tuple[Path, ...]) -> tuple[dict, LineMap]:
    real = Path(os.path.realpath(path))  # os.path: a symlink loop is reported by the read, not raised here
    if real in seen:
        chain = " -> ".join(_display(p) for p in seen + (real,))
        raise SpecError(f"extends cycle: {chain}; remove one of the extends", _display(path))
    if len(seen) >= MAX_EXTENDS:
        raise SpecError(f"extends chain longer than {MAX_EXTENDS} files (from {_display(seen[0])}); "
                        "merge some of the files", _display(path))
    data, lines = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data, lines
    if not isinstance(parent, str) or not parent.strip():
        raise SpecError("extends must be a relative path to another spec file", _display(path), lines.get(("extends",), (None, None))[1], "extends")
    target = Path(os.path.realpath(path.parent / parent))
    where = f"{_display(path)}:{lines[('extends',)][1]}: extends"
    st = stat_path(target, where)
    if st is not None and not stat.S_ISREG(st.st_mode):  # named here: the read's own line ('adir: is a directory, not a
        # file') said neither which file's extends led there nor what to give instead
        raise SpecError(f"extends target '{parent}' is {kind_of(st.st_mode)}; give a path to a spec file",
                        _display(path), lines[("extends",)][1], "extends")
    if st is None:
        # Library specs may be named without a path ("extends: llama").
        lib = library_spec(parent)
        if lib is None:
            raise SpecError(
                f"extends target '{parent}' not found (looked for {_display(target)}); give a path relative to this file",
                _display(path), lines[("extends",)][1], "extends",
            )
        target = lib
    base, base_lines = _resolve_extends(target, seen + (real,))
    # Labels that describe the base file itself (its paper, its published parameter count) are not
    # inherited: an 8-layer spec that extends llama is not LLaMA-7B. A file states its own.
    for label in LABELS_NOT_INHERITED:
        base.pop(label, None)
        base_lines.pop((label,), None)
    lines.pop(("extends",), None)
    return merge(base, data, base_lines, lines), base_lines


# ---------------------------------------------------------------------------------------------
# --set overrides


_FIELD_NAME = __import__("re").compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")  # a key, or a list index


def parse_set(expr: str) -> tuple[Path_, Any]:
    """'attention.kv_heads=8' -> (('attention', 'kv_heads'), 8), the value read as YAML."""
    if "=" not in expr:
        raise UserError(f"--set {expr!r}: expected FIELD=VALUE, e.g. --set attention.kv_heads=8")
    key, _, value = expr.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {expr!r}: the field path is empty; write e.g. --set n_layers=2")
    bad = next((part for part in key.split(".") if not _FIELD_NAME.fullmatch(part)), None)
    if bad is not None:  # e.g. 'n_layers: 2\nvocab_size': `new` would write it as two keys
        raise UserError(f"--set {expr!r}: {bad!r} is not a field name (letters, digits and _, dotted for a section: "
                        "attention.kv_heads); give one FIELD=VALUE per --set")
    parsed: Any = ""
    if value.strip():
        try:  # the same bounded walk as a file: aliases in a --set value cannot expand without limit
            node = _compose(value, f"--set {expr}")
            parsed = None if node is None else _build(node, f"--set {expr}", {})
        except SpecError as e:
            if "YAML syntax error" not in e.message and "not allowed in YAML" not in e.message:
                raise
            parsed = value
    return tuple(key.split(".")), parsed


def apply_sets(data: dict, lines: LineMap, sets: list[str]) -> dict:
    """Apply all --set overrides as one override layer (a later --set of the same field wins), so
    that `--set attention.kv_heads=8 --set attention.sharing=mqa` is checked as written together."""
    over: dict = {}
    set_lines: LineMap = {}
    for expr in sets:
        path, value = parse_set(expr)
        cur = over
        for part in path[:-1]:
            if not isinstance(cur.get(part), dict):
                cur[part] = {}
            cur = cur[part]
        cur[path[-1]] = value
        for p in [p for p in set_lines if p[: len(path)] == path]:
            del set_lines[p]  # a value replaced by this --set no longer comes from the earlier one
        set_lines.update({path[: i + 1]: (f"--set {expr}", 0) for i in range(len(path))})
    return merge(data, over, lines, set_lines) if sets else data


# ---------------------------------------------------------------------------------------------
# Validation errors -> one line


def _line_for(loc: Path_, lines: LineMap) -> tuple[str | None, int | None]:
    for n in range(len(loc), -1, -1):
        hit = lines.get(loc[:n])
        if hit:
            return hit
    return None, None


def _data_path(loc: tuple, data: Any) -> Path_:
    """Pydantic's loc includes union tags ('position', 'rope', 'theta'); keep the keys the data has."""
    out: list[str] = []
    cur = data
    for part in loc:
        part_s = str(part)
        if isinstance(cur, dict) and part_s in cur:
            out.append(part_s)
            cur = cur[part_s]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            out.append(part_s)
            cur = cur[part]
        elif isinstance(cur, dict):
            continue  # a union tag
        else:
            break
    return tuple(out)


def _missing_tail(loc: tuple, data: Any) -> tuple[Path_, list]:
    """Split pydantic's loc of a missing value into the path the data has and the missing rest
    (union tags such as 'adamw' in ('training', 'optimizer', 'adamw', 'betas', 1) are dropped)."""
    have: list[str] = []
    cur, i = data, 0
    while i < len(loc):
        part = loc[i]
        if isinstance(cur, dict) and str(part) in cur:
            have.append(str(part))
            cur = cur[str(part)]
        elif isinstance(cur, list) and isinstance(part, int) and part < len(cur):
            have.append(str(part))
            cur = cur[part]
        elif isinstance(cur, dict) and cur.get("kind") == part:
            pass  # a union tag
        else:
            break
        i += 1
    return tuple(have), list(loc[i:])


def _format_error(err: dict, data: Any, lines: LineMap, file: str, alternatives: list[str] | None = None) -> SpecError:
    loc = _data_path(err["loc"], data)
    ctx = err.get("ctx") or {}
    field = ".".join(loc) or None
    if err["type"] == "spec_conflict":
        first = tuple(ctx["fields"].split(",")[0].split("."))
        src, line = _line_for(first, lines)
        return SpecError(err["msg"], src or file, line)
    if err["type"] == "unknown_key":
        key_path = loc + (ctx["key"],)
        src, line = _line_for(key_path, lines)
        if "hint" in ctx:  # name the section by its full path (training.optimizer, not optimizer)
            where = ".".join(loc) or "the spec"
            hint = ctx["hint"]
            if not hint.startswith("; did you mean"):
                hint = _hint_elsewhere(str(ctx["key"]), loc) or hint
            return SpecError(f"unknown key '{ctx['key']}' in {where}{hint}", src or file, line)
        return SpecError(err["msg"], src or file, line, ".".join(loc) or None)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        section = ".".join(loc) or "the spec"
        kinds = ", ".join(_TAGGED_KINDS.get(loc[-1] if loc else "", ()))
        src, line = _line_for(loc + ("kind",), lines)
        if err["type"] == "union_tag_not_found":
            msg = f"{section} needs a kind; set kind to one of {kinds}"
        else:
            msg = f"unknown {section.rsplit('.', 1)[-1]} kind '{ctx.get('tag')}'; expected one of {kinds}"
            msg += _did_you_mean(ctx.get("tag"), " ".join(f"'{k}'" for k in _TAGGED_KINDS.get(loc[-1] if loc else "", ())))
        return SpecError(msg, src or file, line if src and not src.startswith("--set") else None if src else line)
    src, line = _line_for(loc, lines)
    msg = err["msg"]
    if err["type"] == "missing":
        have, tail = _missing_tail(err["loc"], data)
        src, line = _line_for(have, lines) if have else (file, None)
        if tail and isinstance(tail[0], int):  # a tuple with too few items (betas: [0.9])
            field = ".".join(have)
            msg = f"too few values (item {tail[0]} is missing)"
        else:
            field = ".".join(have + tuple(str(x) for x in tail))
            msg = "required field is missing; add it, or extends: a spec that has it"
    elif err["type"] in ("union_tag_invalid", "literal_error") and "kind" in str(err["loc"]):
        msg = f"unknown kind; {msg}"
    elif err["type"] == "less_than_equal" and type(err["input"]) is int and (low := _lowest_int(err["loc"])) is not None:
        v = err["input"]  # a size past its bound (spec.py MAX_*)
        shown = str(v) if v < 10**60 else f"about 10^{int(v.bit_length() * 0.30103)}"  # str() refuses 4300+ digits
        msg = f"{shown} is more than archc allows; give an integer from {low} to {ctx['le']}"
    elif "input" in err and err["type"] not in ("missing",):
        if alternatives and len(alternatives) > 1:  # a union field: say every accepted form
            msg = "; or ".join(alternatives)
        shown = repr(err["input"])
        if len(shown) > 60:
            shown = shown[:57] + "..."
        msg = f"{msg} (got {shown})"
        if err["type"] in ("enum", "literal_error"):
            msg += _did_you_mean(err["input"], ctx.get("expected", ""))
    return SpecError(msg, src or file, line if src and not src.startswith("--set") else None if src else line, field)


def _lowest_int(loc: tuple) -> int | None:
    """The smallest value the int field at pydantic's `loc` accepts (its gt/ge; 0 if it has none), for the
    out-of-range message: the field's own constraint, so the message and `archc schema` cannot disagree.
    None when `loc` is not an int field (a float in (0, 1] given as 2 keeps pydantic's words)."""
    import typing

    import annotated_types
    from pydantic import BaseModel
    from pydantic.fields import FieldInfo

    model: Any = Spec
    info = None
    for part in loc:
        if info is not None:  # step into the section `info` holds: a model, or the union member whose tag is `part`
            stack, subs = [info.annotation], []
            while stack:
                tp = stack.pop()
                if isinstance(tp, type) and issubclass(tp, BaseModel):
                    subs.append(tp)
                else:
                    stack.extend(typing.get_args(tp))
            info = None
            tagged = [m for m in subs if "kind" in m.model_fields and getattr(m.model_fields["kind"].default, "value", None) == part]
            if tagged:
                model = tagged[0]
                continue
            model = next((m for m in subs if part in m.model_fields), None)
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
    if info is None:
        return None
    found, stack = [], [info.annotation, *info.metadata]
    while stack:  # the field's type and constraints, also those of the Annotated[int, ...] inside `X | None`
        c = stack.pop()
        if isinstance(c, FieldInfo):
            stack.extend(c.metadata)
        elif typing.get_args(c):  # Annotated (its type, then its metadata) or a Union
            stack.extend(typing.get_args(c))
        else:
            found.append(c)
    if int not in found or float in found:
        return None
    for c in found:
        if isinstance(c, annotated_types.Gt):
            return int(c.gt) + 1
        if isinstance(c, annotated_types.Ge):
            return int(c.ge)
    return 0


def _did_you_mean(value: Any, expected: str) -> str:
    """'; did you mean 'rmsnorm'?' for an enum typo ('rms_norm'), from pydantic's list of choices."""
    import difflib
    import re

    if not isinstance(value, str):
        return ""
    choices = re.findall(r"'([^']*)'", expected)
    squash = {c.replace("_", "").replace("-", "").lower(): c for c in choices}
    key = value.replace("_", "").replace("-", "").lower()
    match = [squash[key]] if key in squash else difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    return f"; did you mean '{match[0]}'?" if match else ""


def _field_paths(model: type, prefix: Path_ = ()) -> list[Path_]:
    """Every field's dotted path in the spec model (union sections contribute all their kinds' fields)."""
    import typing

    from pydantic import BaseModel

    out: list[Path_] = []
    for name, info in model.model_fields.items():
        out.append(prefix + (name,))
        stack, subs = [info.annotation], []
        while stack:  # unwrap Annotated / Union / Optional down to the models
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                subs.append(tp)
            else:
                stack.extend(typing.get_args(tp))
        for sub in subs:
            out += [p for p in _field_paths(sub, prefix + (name,)) if p not in out]
    return out


def _hint_elsewhere(key: str, loc: Path_) -> str | None:
    """A key unknown in one section may be a close match for a field of another (rotary_frac in attention)."""
    import difflib

    paths = [p for p in _field_paths(Spec) if p[:-1] != loc]
    by_leaf: dict[str, Path_] = {}
    for p in paths:
        by_leaf.setdefault(p[-1], p)
    match = difflib.get_close_matches(key, sorted(by_leaf), n=1, cutoff=0.75)
    if not match:
        return None
    where = "a top-level field" if len(by_leaf[match[0]]) == 1 else "it belongs to another section"
    return f"; did you mean {'.'.join(by_leaf[match[0]])}? ({where})"


# Sections chosen by a `kind` tag, and the kinds each accepts (for the "unknown kind" message).
_TAGGED_KINDS = {
    "position": [k.value for k in PositionKind],
    "optimizer": [k.value for k in OptimizerKind],
    "schedule": [k.value for k in ScheduleKind],
}


def _default_kinds(data: dict) -> dict:
    """A tagged section written without `kind` gets the kind its field defaults to (position: rope,
    optimizer: adamw, schedule: cosine), as if the section were absent and then partly overridden."""
    def fill(section: Any, model: type, field: str) -> Any:
        if isinstance(section, dict) and "kind" not in section:
            default = model.model_fields[field].get_default(call_default_factory=True)
            return {"kind": default.kind.value, **section}
        return section

    from archc.spec import TrainingSpec

    out = dict(data)
    if "position" in out:
        out["position"] = fill(out["position"], Spec, "position")
    training = out.get("training")
    if isinstance(training, dict):
        training = dict(training)
        for field in ("optimizer", "schedule"):
            if field in training:
                training[field] = fill(training[field], TrainingSpec, field)
        out["training"] = training
    return out


def validate_data(data: dict, lines: LineMap, file: str) -> Spec:
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping", file)
    data = _default_kinds(data)
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        problems = _problems(e.errors(include_url=False), data, lines, file)
        first = problems[0]
        more = len(problems) - 1
        if more:
            first = SpecError(first.message + f" (and {more} more problem{'s' if more > 1 else ''}; "
                              "`archc validate --all-errors` lists them)", first.file, first.line, first.field)
        first.problems = problems
        raise first from None


def _problems(errors: list[dict], data: dict, lines: LineMap, file: str) -> list[SpecError]:
    """Every validation problem as one SpecError, the most specific first (an unknown key or a
    conflict explains more than 'missing'); a union field's per-variant errors at one place become
    one problem that names every accepted form."""
    order = {"unknown_key": 0, "spec_conflict": 1}
    errors = sorted(errors, key=lambda x: order.get(x["type"], 2))
    out: list[SpecError] = []
    shown: set[str] = set()
    done_alternatives: set[Path_] = set()
    for err in errors:
        here = _data_path(err["loc"], data)
        alternatives = None
        if err["type"] not in order and err["type"] != "missing":
            if here in done_alternatives:
                continue
            same = [x for x in errors if _data_path(x["loc"], data) == here and x["type"] not in order and x["type"] != "missing"]
            alternatives = list(dict.fromkeys(x["msg"] for x in same))
            done_alternatives.add(here)
        problem = _format_error(err, data, lines, file, alternatives)
        if str(problem) not in shown:
            shown.add(str(problem))
            out.append(problem)
    return out


def load_data(path: str | os.PathLike, sets: list[str] | None = None) -> tuple[dict, LineMap]:
    p = Path(path)
    data, lines = _resolve_extends(p, ())
    if sets:
        data = apply_sets(data, lines, sets)
    return data, lines


def load_spec(path: str | os.PathLike, sets: list[str] | None = None) -> Spec:
    """Load, merge extends, apply --set overrides and validate. Raises SpecError (a UserError).

    `path` is what the CLI accepts: a spec file, a library spec by name ('llama'), or a directory
    made by `archc compile` (its spec.yaml)."""
    p = resolve_spec_path(path)
    data, lines = load_data(p, sets)
    return validate_data(data, lines, _display(p))


def resolve_spec_path(arg: str | os.PathLike) -> Path:
    """A spec file, a library spec by name ('llama'), or a compiled model directory (its spec.yaml).
    A file that exists wins over a library name."""
    if str(arg) == "":  # Path("") is ".": the message named no file ('directory has no spec.yaml')
        raise SpecError("an empty path; give a spec file, a library spec name (llama) or a directory made by `archc compile`", "''")
    p = Path(arg)
    if p.is_dir():
        inner = p / "spec.yaml"
        if not os.path.lexists(inner):  # a link there that leads nowhere (or loops) is reported by the read, naming it
            raise SpecError("directory has no spec.yaml; give a spec file or a directory made by `archc compile`", str(arg))
        return inner
    if not p.exists() and not p.suffix and isinstance(arg, str):
        lib = library_spec(arg)
        if lib is not None:
            return lib
    return p


def spec_from_dict(data: dict, sets: list[str] | None = None, source: str = "<dict>") -> Spec:
    lines: LineMap = {}
    if sets:
        data = apply_sets(dict(data), lines, sets)
    return validate_data(data, lines, source)


# ---------------------------------------------------------------------------------------------
# The spec library


def library_dir() -> Path:
    """The spec library, package data of archc (archc/specs): in a checkout and an editable install
    a symlink to the top-level specs/, in a wheel the files themselves."""
    from importlib.resources import files

    # archc is an ordinary directory package (never zipped: pyproject ships it as files), so the
    # resource is a real path that Path and glob can read.
    return Path(str(files("archc").joinpath("specs")))


def library_spec(name: str) -> Path | None:
    stem = name[:-5] if name.endswith(".yaml") else name
    candidate = library_dir() / f"{stem}.yaml"
    return candidate if candidate.exists() else None


def library_specs() -> list[Path]:
    return sorted(library_dir().glob("*.yaml"))
