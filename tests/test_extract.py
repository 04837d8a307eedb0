"""Code extraction and entry-point renaming, on hand-written answers and on RouterBench's recorded ones."""

import ast
from functools import lru_cache

import pytest

from sysaware.tasks.extract import defined_functions, extract_code, rename_entry_point
from sysaware.tasks.regrade import load_recorded_answers

FENCE = "```"


def fenced(code, lang="python"):
    return f"{FENCE}{lang}\n{code}\n{FENCE}"


@lru_cache(maxsize=1)
def _recorded():
    answers, _ = load_recorded_answers()
    return {(a.task_id, a.model): a.answer for a in answers}


def recorded(task_id, model):
    return _recorded()[(task_id, model)]


def top_level_statements(code):
    return [type(n).__name__ for n in ast.parse(code).body]


# ---- shapes of answers ----------------------------------------------------------------------------------------


def test_fenced_function_keeps_the_function_and_drops_the_usage_block():
    answer = (
        "Here is the function:\n\n"
        + fenced("def add(a, b):\n    return a + b")
        + "\n\nUse it like this:\n\n"
        + fenced("print(add(1, 2))  # 3\nassert add(2, 2) == 4")
        + "\nIt adds."
    )
    assert extract_code(answer).strip() == "def add(a, b):\n    return a + b"


def test_usage_lines_inside_the_defining_block_are_stripped_but_constants_it_reads_are_kept():
    code = (
        "import math\n"
        "SCALE = 2\n"
        "n = 5\n"
        "def area(r):\n"
        "    n = r * r\n"
        "    return SCALE * math.pi * n\n"
        "r = int(input('radius: '))\n"
        "print(area(r))\n"
        "if __name__ == '__main__':\n"
        "    print(area(3))\n"
    )
    out = extract_code(fenced(code))
    # area's local n must not keep the module-level n alive; input() and print() must go.
    assert top_level_statements(out) == ["Import", "Assign", "FunctionDef"]
    assert "SCALE = 2" in out and "input(" not in out and "print(" not in out


def test_codellama_python_tags_give_the_solution_and_never_the_tests_section():
    answer = (
        "[PYTHON]\ndef remove_elements(list1, list2):\n    return [x for x in list1 if x not in list2]\n[/PYTHON]\n"
        "[TESTS]\n# Test case 1:\nassert remove_elements([1, 2], [1]) == [2]\n[/TESTS]\n"
    )
    out = extract_code(answer)
    assert defined_functions(out) == ["remove_elements"]
    assert "assert" not in out


def test_codellama_answer_cut_before_its_closing_tag_still_yields_the_code():
    answer = "[PYTHON]\ndef f(x):\n    return x * 2\n"
    assert defined_functions(extract_code(answer)) == ["f"]


def test_bare_code_with_prose_around_it_keeps_only_the_code():
    answer = (
        " Sure! The lateral surface area of a cone is pi * r * l.\n\n"
        "So, the function would be:\n\n"
        "import math\n"
        "def lateral_surface_area(r, h):\n"
        "    l = math.sqrt(r**2 + h**2)\n"
        "    return math.pi * r * l\n\n"
        "This function takes in the radius r and height h of the cone.\n\n"
        "print(lateral_surface_area(5, 10))\n"
    )
    out = extract_code(answer)
    assert top_level_statements(out) == ["Import", "FunctionDef"]
    assert "This function" not in out


def test_helper_in_a_later_block_is_joined_with_the_function_that_calls_it():
    answer = (
        "Main function:\n"
        + fenced("def count_primes(n):\n    return sum(is_prime(k) for k in range(n))")
        + "\nIt needs this helper:\n"
        + fenced("def is_prime(k):\n    return k > 1 and all(k % d for d in range(2, k))")
    )
    assert defined_functions(extract_code(answer)) == ["count_primes", "is_prime"]


def test_a_second_version_of_the_same_function_is_an_alternative_and_the_first_stands():
    answer = (
        fenced("def remove_whitespaces(s):\n    return s.replace(' ', '')")
        + "\nIf you want to remove other whitespace too, use strip:\n"
        + fenced("def remove_whitespaces(s):\n    return s.strip()")
    )
    assert "replace" in extract_code(answer) and "strip" not in extract_code(answer)


def test_an_unrelated_function_under_another_name_is_an_alternative_not_a_complement():
    answer = (
        fenced("def intersection(a, b):\n    return list(set(a) & set(b))")
        + "\nTo keep the order of the first list:\n"
        + fenced("def ordered_intersection(a, b):\n    s = set(b)\n    return [x for x in a if x in s]")
    )
    assert defined_functions(extract_code(answer)) == ["intersection"]


def test_a_later_block_with_strictly_more_definitions_is_the_complete_version():
    answer = (
        fenced("def solve(xs):\n    return helper(xs)")
        + "\nFull code:\n"
        + fenced("def helper(xs):\n    return sorted(xs)\n\ndef solve(xs):\n    return helper(xs)[::-1]")
    )
    out = extract_code(answer)
    assert defined_functions(out) == ["helper", "solve"] and "[::-1]" in out


def test_import_given_only_in_the_usage_block_is_carried_over():
    answer = fenced("def root(x):\n    return math.sqrt(x)") + "\n" + fenced("import math\nprint(root(4))")
    out = extract_code(answer)
    assert top_level_statements(out) == ["Import", "FunctionDef"]


def test_test_function_without_arguments_does_not_count_as_the_solution():
    answer = fenced("def double(x):\n    return 2 * x") + "\n" + fenced("def test_double():\n    assert double(2) == 4")
    assert defined_functions(extract_code(answer)) == ["double"]


def test_interactive_session_block_is_an_example_but_a_doctest_in_a_docstring_is_code():
    answer = (
        fenced('def pairs(xs):\n    """\n    >>> pairs([1, 2, 3])\n    [(1, 2), (2, 3)]\n    """\n    return list(zip(xs, xs[1:]))', "")
        + "\n"
        + fenced(">>> pairs([1, 2])\n[(1, 2)]", "")
    )
    out = extract_code(answer)
    assert defined_functions(out) == ["pairs"] and "return list(zip" in out


def test_unclosed_fence_of_a_truncated_answer_is_read_to_the_end():
    answer = "Here you go:\n```python\ndef is_greater(number, array):\n    return all(number > a for a in array)\n"
    assert defined_functions(extract_code(answer)) == ["is_greater"]


def test_markdown_escaped_identifiers_are_unescaped_when_that_makes_the_code_parse():
    answer = fenced("def sum\\_of\\_list(xs):\n    return sum(xs) \\* 1")
    out = extract_code(answer)
    assert defined_functions(out) == ["sum_of_list"] and "sum(xs) * 1" in out


@pytest.mark.parametrize("answer", ["", "There is no such thing as a woodball number.", fenced("int main() {}", "cpp")])
def test_answer_without_python_gives_no_code(answer):
    assert extract_code(answer) == ""


# ---- renaming ---------------------------------------------------------------------------------------------------


def test_rename_renames_the_uncalled_function_and_its_recursive_calls_but_not_helpers():
    code = (
        "def helper(n):  # keep me\n"
        "    return n - 1\n\n"
        "def fact(n):\n"
        "    return 1 if n == 0 else n * fact(helper(n))\n"
    )
    out = rename_entry_point(code, "factorial")
    assert defined_functions(out) == ["helper", "factorial"]
    assert "factorial(helper(n))" in out and "# keep me" in out
    namespace = {}
    exec(out, namespace)
    assert namespace["factorial"](5) == 120


def test_rename_leaves_code_alone_when_the_name_already_exists():
    code = "def helper(x):\n    return x\n\ndef target(x):\n    return helper(x)\n"
    assert rename_entry_point(code, "target") == code


def test_rename_picks_the_last_defined_of_several_uncalled_functions():
    code = "def first(x):\n    return x\n\ndef second(x):\n    return -x\n"
    assert defined_functions(rename_entry_point(code, "wanted")) == ["first", "wanted"]


def test_rename_touches_names_not_attributes_or_strings():
    code = "def go(obj):\n    return obj.go, 'go', go\n"
    out = rename_entry_point(code, "run")
    assert out == "def run(obj):\n    return obj.go, 'go', run\n"


def test_rename_falls_back_to_regex_when_the_code_does_not_parse():
    code = "def helper(x):\n    return x\n\ndef solve(x)\n    return helper(x) + solve(x - 1)\n"
    out = rename_entry_point(code, "answer")
    assert "def answer(x)" in out and "answer(x - 1)" in out and "def helper(x)" in out


def test_rename_handles_non_ascii_text_before_the_name():
    code = "def area(r):\n    π = 3.14159; return π * r * r if r > 0 else area(-r)\n"
    out = rename_entry_point(code, "circle_area")
    assert "else circle_area(-r)" in out


# ---- RouterBench's recorded answers ---------------------------------------------------------------------------


def test_recorded_codellama_answer_drops_its_tests_section():
    # Task 161, "remove all elements from a given list present in another list": [PYTHON] ... [TESTS] five asserts.
    answer = recorded(161, "meta/code-llama-instruct-34b-chat")
    assert "[TESTS]" in answer
    out = extract_code(answer)
    assert defined_functions(out) == ["remove_elements"] and "assert" not in out


def test_recorded_claude_instant_bare_answer_keeps_the_function_without_prints_or_prose():
    out = extract_code(recorded(564, "claude-instant-v1"))
    assert defined_functions(out) == ["count_unequal_pairs"]
    assert "print" not in out and "We iterate" not in out


def test_recorded_mixtral_answer_with_markdown_escapes_becomes_runnable():
    # Task 734: "def sum\_of\_product(arr):" in the recording.
    answer = recorded(734, "mistralai/mixtral-8x7b-chat")
    assert "def sum\\_of\\_product" in answer
    assert defined_functions(extract_code(answer)) == ["sum_of_product"]


def test_recorded_llama_doctest_answer_keeps_the_code():
    out = extract_code(recorded(766, "meta/llama-2-70b-chat"))
    assert defined_functions(out) == ["consecutive_pairs"] and "return [(lst[i], lst[i+1])" in out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # answers hold invalid escapes like "\\d"
def test_every_recorded_answer_extracts_to_definitions_only():
    """Over all 4697 recorded answers: code that parses holds only imports, definitions and module constants."""
    allowed = {"Import", "ImportFrom", "FunctionDef", "AsyncFunctionDef", "ClassDef", "Assign", "AnnAssign", "Try"}
    parsed = 0
    for answer in _recorded().values():
        out = extract_code(answer)
        try:
            statements = top_level_statements(out)
        except SyntaxError:
            continue
        parsed += 1
        if any(s == "FunctionDef" for s in statements):
            assert set(statements) <= allowed, out
    assert parsed > 0.95 * len(_recorded())
