"""An answer's entry point renamed to the asserts' function, in its code and in its prose.

RouterBench asked each model the bare MBPP problem (no example assert), so an answer's function name is often not
the one the asserts call. What the twin replays is the answer with its entry point renamed to the asserts' name
(``rename_entry_point``), which is also what the regrade graded, so the sandbox grade describes exactly the code
the twin emits.
"""

from __future__ import annotations

import ast
import re
import warnings
from functools import lru_cache

from sysaware.tasks.extract import extract_code, rename_entry_point
from sysaware.tasks.mbpp import get_task


@lru_cache(maxsize=8192)
def solution_code(answer: str) -> str:
    """``extract_code``, cached: renaming an answer extracts its code up to three times (about 1 ms each)."""
    return extract_code(answer)


def parse_quietly(code: str) -> ast.Module:
    """``ast.parse`` without the warnings recorded code triggers (invalid escapes such as '\\d' in plain strings)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return ast.parse(code)


def renamed_answer(raw_text: str, task_id: int) -> str:
    """``raw_text`` with the solution's main function renamed to the name the task's asserts call.

    The rename is done on the whole answer (code blocks, usage examples and prose mention the same identifier), so
    the answer still reads naturally; when that would change what the extractor finds, the code blocks alone are
    rewritten.
    """
    entry = get_task(task_id).entry_point
    code = solution_code(raw_text)
    if not entry or not code:
        return raw_text
    renamed_code = rename_entry_point(code, entry)
    if renamed_code == code:
        return raw_text
    old = renamed_from(code, renamed_code)
    if old is None:
        return raw_text
    candidate = rename_identifier(raw_text, old, entry)
    if _same_program(solution_code(candidate), renamed_code):
        return candidate
    # The textual rename touched something that is not the function (a variable of the same name): rename the
    # code block alone, where the answer holds it verbatim.
    stripped = code.strip("\n")
    if stripped in raw_text:
        swapped = raw_text.replace(stripped, renamed_code.strip("\n"), 1)
        if _same_program(solution_code(swapped), renamed_code):
            return swapped
    # Last resort: the answer's prose around one fenced block holding exactly the graded code.
    return f"```python\n{renamed_code.strip()}\n```\n\n{prose_of(raw_text)}".rstrip() + "\n"


def rename_identifier(text: str, old: str, new: str) -> str:
    """``text`` with every whole-word ``old`` (not an attribute, ``x.old``) replaced by ``new``."""
    return re.sub(rf"(?<![\w.]){re.escape(old)}(?!\w)", new, text)


_BLANK_LINES = re.compile(r"\n{3,}")
_DEF_NAME = re.compile(r"def\s+([A-Za-z_]\w*)")
_CODE_REGION = re.compile(r"```.*?(?:```|\Z)|\[PYTHON\].*?(?:\[/PYTHON\]|\Z)|\[TESTS\].*?(?:\[/TESTS\]|\Z)", re.S)


def prose_of(text: str) -> str:
    """An answer's words outside its code blocks (fences, CodeLlama's [PYTHON] and [TESTS] sections)."""
    return _BLANK_LINES.sub("\n\n", _CODE_REGION.sub("", text)).strip()


def _same_program(a: str, b: str) -> bool:
    """Equal code up to comments and docstrings (the prose the rename may also touch)."""
    if a == b:
        return True
    try:
        return without_docstrings(parse_quietly(a)) == without_docstrings(parse_quietly(b))
    except (SyntaxError, ValueError):
        return False


def without_docstrings(tree: ast.Module) -> str:
    """The program's syntax tree, dumped, without docstrings (so a renamed docstring still counts as the same)."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def renamed_from(code: str, renamed: str) -> str | None:
    """The identifier ``rename_entry_point`` replaced (first differing ``def`` name)."""
    before = _DEF_NAME.findall(code)
    after = _DEF_NAME.findall(renamed)
    for a, b in zip(before, after):
        if a != b:
            return a
    return None
