"""A wrong answer derived from MBPP's reference solution, for tasks where no recorded answer fails.

The twin never makes up code: a failing solution is a real recorded one when it can be, and otherwise the reference
with the bugs LLM-written code typically has.
"""

from __future__ import annotations

import ast
from functools import lru_cache

from sysaware.engines.twin.responder.renaming import parse_quietly

# The mutation injects the bugs LLM-written code typically has, at every site where they apply: off-by-one range
# ends and slice bounds, inverted comparisons (< vs >, == vs !=, in vs not in), swapped operators (+/-, & vs |),
# min/max and any/all mix-ups, a reversed sort, the wrong string method (upper/lower, startswith/endswith),
# append at the wrong end, an integer constant off by one, and, where the code has no comparison (so the flips
# cannot cancel out, as De Morgan pairs would), swapped and/or and negated boolean constants. Loop conditions of
# ``while`` are left alone: a flipped one can run forever. Code offering none of those sites prints its result
# instead of returning it. Measured with the sandbox over all 974 MBPP references, 948 variants fail their
# asserts and 26 (2.7%) still pass; tests/test_responder.py checks that every task where the twin needs one (no
# recorded answer fails it) gets a failing variant.

_COMPARE_SWAP: dict[type, type] = {
    ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}  # fmt: skip
_BINOP_SWAP: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv,
    ast.Div: ast.Mult, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.BitXor: ast.BitOr,
    ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}  # fmt: skip
_BUILTIN_SWAP = {"max": "min", "min": "max", "any": "all", "all": "any"}
_METHOD_SWAP = {
    "upper": "lower", "lower": "upper", "startswith": "endswith", "endswith": "startswith", "lstrip": "rstrip",
    "rstrip": "lstrip", "isupper": "islower", "islower": "isupper", "index": "rindex", "find": "rfind",
    "rfind": "find", "nlargest": "nsmallest", "nsmallest": "nlargest", "findall": "match",
}  # fmt: skip


class _InjectBugs(ast.NodeTransformer):
    def __init__(self, flip_logic: bool) -> None:
        self.flip_logic = flip_logic  # and/or and True/False flips, only where no comparison can cancel them
        self.sites = 0
        self._while_depth = 0

    def visit_While(self, node: ast.While) -> ast.While:
        self._while_depth += 1
        node.body = [self.visit(n) for n in node.body]
        node.orelse = [self.visit(n) for n in node.orelse]
        self._while_depth -= 1
        return node

    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Name) and func.id == "range" and node.args:
            stop = 0 if len(node.args) == 1 else 1
            node.args[stop] = ast.BinOp(node.args[stop], ast.Sub(), ast.Constant(1))
        elif isinstance(func, ast.Name) and func.id in _BUILTIN_SWAP:
            func.id = _BUILTIN_SWAP[func.id]
        elif isinstance(func, ast.Name) and func.id == "sorted" and not any(k.arg == "reverse" for k in node.keywords):
            node.keywords.append(ast.keyword("reverse", ast.Constant(True)))
        elif isinstance(func, ast.Attribute) and func.attr in _METHOD_SWAP:
            func.attr = _METHOD_SWAP[func.attr]
        elif isinstance(func, ast.Attribute) and func.attr == "append":
            func.attr, node.args = "insert", [ast.Constant(0), *node.args]
        else:
            return node
        self.sites += 1
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.Compare:
        self.generic_visit(node)
        if not self._while_depth and any(type(op) in _COMPARE_SWAP for op in node.ops):
            node.ops = [_COMPARE_SWAP.get(type(op), type(op))() for op in node.ops]
            self.sites += 1
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.BinOp:
        self.generic_visit(node)
        if not self._while_depth and type(node.op) in _BINOP_SWAP:
            node.op = _BINOP_SWAP[type(node.op)]()
            self.sites += 1
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.BoolOp:
        self.generic_visit(node)
        if not self._while_depth and self.flip_logic:
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.sites += 1
        return node

    def visit_Slice(self, node: ast.Slice) -> ast.Slice:
        self.generic_visit(node)
        if node.upper is not None:
            node.upper = ast.BinOp(node.upper, ast.Sub(), ast.Constant(1))
        elif node.lower is not None:
            node.lower = ast.BinOp(node.lower, ast.Add(), ast.Constant(1))
        else:
            return node
        self.sites += 1
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if isinstance(node.value, bool):
            if self.flip_logic:
                node.value = not node.value
                self.sites += 1
        elif isinstance(node.value, int) and node.value >= 2 and not self._while_depth:
            node.value += 1
            self.sites += 1
        return node


class _PrintInsteadOfReturn(ast.NodeTransformer):
    def visit_Return(self, node: ast.Return) -> ast.AST:
        if node.value is None:
            return node
        return ast.Expr(ast.Call(ast.Name("print", ast.Load()), [node.value], []))


@lru_cache(maxsize=2048)
def wrong_variant(code: str) -> str:
    """``code`` with typical bugs injected (see the comment above); the asserts fail for 97% of MBPP."""
    try:
        tree = parse_quietly(code)
    except (SyntaxError, ValueError):
        return code.replace("return ", "print(", 1) if "return " in code else code + "\n# unfinished\n"
    has_compare = any(isinstance(n, ast.Compare) for n in ast.walk(tree))
    injector = _InjectBugs(flip_logic=not has_compare)
    tree = injector.visit(tree)
    if not injector.sites:
        tree = _PrintInsteadOfReturn().visit(tree)
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"
