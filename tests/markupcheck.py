"""A static check that user text never reaches rich markup unescaped (used by tests/prep/test_markup_cli.py).

rich parses as markup every string given to `Console.print`, `Table.add_row`, `Table(title=...)`,
`add_column` headers and `Text.from_markup`. In those places every value that is not a literal must
be made inert: wrapped in `esc(...)`, or be a number — a `len(...)`, a value with a format spec
(`{loss:.4f}`), arithmetic, or a name from the short NUMERIC list below. A local variable is safe
when every assignment to it in its function is; a loop variable is safe over a tuple of literals.
A call with `markup=False` is exempt. Anything else is reported with its line, so a new command
cannot bring the `[/]` crash back.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PRINT_METHODS = {"print", "log", "rule"}
ROW_METHODS = {"add_row"}
MARKUP_KEYWORDS = {"title", "caption", "header"}
SAFE_CALLS = {"esc", "len"}
NUMBER_CALLS = {"len", "round", "max", "min", "sum", "int", "float", "abs"}
# Identifiers that hold counts and sizes in the CLI modules (never text). Keep this list short and obvious.
NUMERIC = {"count", "counts", "captioned", "crops", "focal", "upscale", "min_size", "keep_tokens", "batch_size",
           "distinct_tags", "missing", "empty", "orphans", "files", "matched", "reordered", "steps", "total_steps",
           "epochs", "steps_per_epoch", "width", "height", "bw", "bh", "batches", "over", "limit", "frequency",
           "added", "removed", "shape", "repeats", "tokens", "top", "images", "step"}
# Our own symbols, never user text.
SYMBOLS = {"mark"}


def cli_sources(root: Path) -> list[Path]:
    """Every file that renders console output for a command: cli.py and each `commands/` module, so a
    command group added as a new module is checked without anyone remembering to list it."""
    return [root / "cli.py", *sorted((root / "commands").glob("*.py"))]


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code}"


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name):
            return func.id
        if isinstance(func, ast.Attribute):
            return func.attr
    return None


def _identifier(node: ast.AST) -> str | None:
    """`count`, `summary.crops`, `counts[kind]` → count, crops, counts."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def numeric(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float))
    if _call_name(node) in NUMBER_CALLS:
        return True
    if isinstance(node, ast.BinOp):
        return numeric(node.left) and numeric(node.right)
    if isinstance(node, ast.UnaryOp):
        return numeric(node.operand)
    return _identifier(node) in NUMERIC


class Scope:
    """Names known safe in one function: assigned only from safe expressions, or looping over literals."""

    def __init__(self, function: ast.AST | None) -> None:
        self.assigned: dict[str, list[ast.AST]] = {}
        self.literal_loops: set[str] = set()
        for node in ast.walk(function) if function is not None else ():
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.assigned.setdefault(target.id, []).append(node.value)
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                if isinstance(node.iter, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.iter.elts):
                    self.literal_loops.add(node.target.id)
        self._checking: set[str] = set()

    def safe_name(self, name: str) -> bool:
        if name in self.literal_loops or name in SYMBOLS:
            return True
        values = self.assigned.get(name)
        if not values or name in self._checking:
            return False
        self._checking.add(name)
        try:
            return all(safe(v, self) for v in values)
        finally:
            self._checking.discard(name)


def safe(node: ast.AST, scope: Scope | None = None) -> bool:
    """Whether an expression cannot carry user text into markup."""
    scope = scope or Scope(None)
    if isinstance(node, ast.Constant) or numeric(node):
        return True
    if _call_name(node) in SAFE_CALLS:
        return True
    if _call_name(node) == "str" and isinstance(node, ast.Call) and node.args:
        return numeric(node.args[0]) or safe(node.args[0], scope)
    if isinstance(node, ast.Name):
        return scope.safe_name(node.id)
    if isinstance(node, ast.JoinedStr):
        return all(safe(part, scope) for part in node.values)
    if isinstance(node, ast.FormattedValue):
        return node.format_spec is not None or safe(node.value, scope)
    if isinstance(node, ast.IfExp):
        return safe(node.body, scope) and safe(node.orelse, scope)
    if isinstance(node, ast.BoolOp):
        return all(safe(v, scope) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        return safe(node.left, scope) and safe(node.right, scope)
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(safe(e, scope) for e in node.elts)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        # colours[status]: a dict literal of our own markup, indexed by anything
        values = scope.assigned.get(node.value.id, [])
        return bool(values) and all(isinstance(v, ast.Dict) and all(safe(x, scope) for x in v.values) for v in values)
    if isinstance(node, ast.Call) and _call_name(node) == "join" and isinstance(node.func, ast.Attribute):
        # ", ".join(esc(x) for x in …) or "×".join(map(str, shape)): a literal separator, safe pieces
        argument = node.args[0] if node.args else None
        if isinstance(argument, (ast.GeneratorExp, ast.ListComp)):
            return safe(node.func.value, scope) and safe(argument.elt, scope)
        if isinstance(argument, ast.Call) and _call_name(argument) == "map" and len(argument.args) == 2:
            return safe(node.func.value, scope) and numeric(argument.args[1])
        return False
    return False


def _markup_arguments(call: ast.Call) -> list[ast.AST]:
    """The arguments of `call` that rich will parse as markup (empty when it is not such a call)."""
    if any(k.arg == "markup" and isinstance(k.value, ast.Constant) and k.value.value is False for k in call.keywords):
        return []
    name = _call_name(call)
    func = call.func
    if isinstance(func, ast.Attribute) and _call_name(func.value) == "super":
        return []  # an override forwarding its own arguments; its callers are checked
    arguments: list[ast.AST] = []
    if name in PRINT_METHODS and isinstance(func, ast.Attribute):
        arguments += [a for a in call.args if not isinstance(a, ast.Name) or a.id.islower()]
    if name in ROW_METHODS:
        arguments += call.args
    if name in {"Table", "add_column", "Column", "from_markup", "Panel", "add_task"}:
        if name in {"add_column", "from_markup", "Panel", "add_task"}:
            arguments += call.args[:1]
        arguments += [k.value for k in call.keywords if k.arg in MARKUP_KEYWORDS | {"description"}]
    return arguments


def _is_renderable(node: ast.AST) -> bool:
    """A print argument that is a rich renderable (a Table, a Group …) built elsewhere and checked there."""
    return isinstance(node, ast.Name) or (isinstance(node, ast.Call) and _call_name(node) not in {"str", "repr", "format"}
                                          and not isinstance(node.func, ast.Attribute))


def _calls_by_function(tree: ast.AST) -> list[tuple[ast.AST | None, ast.Call]]:
    """Every call with the innermost function it sits in (None at module level)."""
    found: list[tuple[ast.AST | None, ast.Call]] = []

    def visit(node: ast.AST, function: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else function
            if isinstance(child, ast.Call):
                found.append((function, child))
            visit(child, inner)

    visit(tree, None)
    return found


def violations(path: Path) -> list[Violation]:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    lines = text.splitlines()
    scopes: dict[int, Scope] = {}
    found = []
    for function, node in _calls_by_function(tree):
        scope = scopes.setdefault(id(function), Scope(function))
        for argument in _markup_arguments(node):
            if _call_name(node) in PRINT_METHODS and _is_renderable(argument):
                continue
            if not safe(argument, scope):
                found.append(Violation(path.as_posix(), argument.lineno, lines[argument.lineno - 1].strip()))
    return found
