"""Re-grading RouterBench's answers: matching rows to tasks, grading, the committed table and the agreement maths."""

import math

import pandas as pd
import pytest

from sysaware.tasks.mbpp import get_task
from sysaware.tasks.regrade import (
    COLUMNS,
    MODELS,
    RecordedAnswer,
    agreement_report,
    agreement_table,
    cohens_kappa,
    grade_jobs,
    load_recorded_answers,
    load_regrade_table,
    match_task,
    regrade,
)
from sysaware.tasks.sandbox import run_tests_batch

FENCE = "```"


def answer_with(code):
    return f"Here is the function:\n{FENCE}python\n{code}\n{FENCE}\nExample:\n{FENCE}python\nprint(1)\n{FENCE}"


def grade(answer, task_id):
    """(raw passed, renamed passed) for one answer to one sanitized task."""
    raw, renamed = grade_jobs(answer, get_task(task_id, sanitized=True), timeout_s=10.0)
    raw_result, renamed_result = run_tests_batch([raw, renamed], max_workers=2)
    return raw_result.passed, renamed_result.passed


def fake_table(rows):
    """rows: (model, routerbench_correct, sandbox_correct_raw, sandbox_correct)."""
    return pd.DataFrame(
        [
            {"task_id": i, "split": "train", "model": m, "routerbench_correct": rb, "sandbox_correct_raw": raw,
             "sandbox_correct": ours, "status": "passed" if ours else "failed_assert", "answer_chars": 100}
            for i, (m, rb, raw, ours) in enumerate(rows)
        ],
        columns=COLUMNS,
    )


# ---- grading --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", [2, 11, 17, 58])
def test_reference_solutions_grade_correct(task_id):
    task = get_task(task_id, sanitized=True)
    assert grade(answer_with(task.reference_code), task_id) == (True, True)


def test_known_wrong_answer_grades_wrong():
    # Task 17: perimeter of a square, assert square_perimeter(10)==40. This returns the area.
    assert grade(answer_with("def square_perimeter(a):\n    return a * a"), 17) == (False, False)


def test_correct_function_under_another_name_passes_only_after_renaming():
    assert grade(answer_with("def perimeter_of_square(side):\n    return 4 * side"), 17) == (False, True)


def test_test_imports_are_available_to_the_asserts():
    # Task 300's asserts call math.isclose; its test_imports supply "import math".
    task = get_task(300, sanitized=True)
    assert "import math" in task.test_imports
    assert grade(answer_with(task.reference_code), 300) == (True, True)


def test_regrade_builds_one_row_per_answer_with_both_grades():
    answers = [
        RecordedAnswer(17, "train", "m-right", 1, answer_with("def perim(a):\n    return 4 * a")),
        RecordedAnswer(17, "train", "m-wrong", 1, answer_with("def square_perimeter(a):\n    return a * a")),
        RecordedAnswer(17, "train", "m-none", 0, "I cannot help with that."),
    ]
    table = regrade(answers, max_workers=2, timeout_s=10.0, progress=False)
    assert list(table.columns) == COLUMNS
    rows = table.set_index("model")
    assert rows.loc["m-right", ["sandbox_correct_raw", "sandbox_correct", "status"]].tolist() == [0, 1, "passed"]
    assert rows.loc["m-wrong", ["sandbox_correct", "status"]].tolist() == [0, "failed_assert"]
    assert rows.loc["m-none", ["sandbox_correct", "status"]].tolist() == [0, "error"]
    assert rows.loc["m-none", "answer_chars"] == len("I cannot help with that.")


# ---- matching RouterBench rows to tasks ----------------------------------------------------------------------


def test_identical_statements_are_told_apart_by_sample_id():
    # Tasks 71 and 141 share "Write a function to sort a list of elements."; they are rows 29 and 87 of the file.
    text = get_task(71, sanitized=True).text
    assert get_task(141, sanitized=True).text == text
    assert match_task(text, "mbpp.dev.29").task_id == 71
    assert match_task(text, "mbpp.dev.87").task_id == 141


def test_unknown_prompt_matches_nothing():
    assert match_task("Write a function that makes coffee.", "mbpp.dev.3") is None


def test_every_routerbench_row_matches_a_distinct_task():
    answers, unmatched = load_recorded_answers(models=MODELS[:1])
    assert unmatched == []
    assert len(answers) == 427 and len({a.task_id for a in answers}) == 427


# ---- the committed table -------------------------------------------------------------------------------------


def test_committed_table_covers_every_model_and_task_with_binary_grades():
    table = load_regrade_table()
    assert list(table.columns) == COLUMNS
    assert len(table) == 11 * 427
    assert set(table["model"]) == set(MODELS)
    assert table.groupby("model")["task_id"].nunique().eq(427).all()
    for column in ("routerbench_correct", "sandbox_correct_raw", "sandbox_correct"):
        assert set(table[column].unique()) <= {0, 1}
    assert set(table["split"]) == {"train", "test"}
    # Passing is exactly the "passed" status.
    assert ((table["status"] == "passed") == (table["sandbox_correct"] == 1)).all()


def test_committed_table_keeps_routerbench_grades_as_recorded():
    table = load_regrade_table().set_index(["task_id", "model"])
    answers, _ = load_recorded_answers()
    recorded = {(a.task_id, a.model): a.routerbench_correct for a in answers}
    assert {k: int(v) for k, v in table["routerbench_correct"].items()} == recorded


# ---- agreement ------------------------------------------------------------------------------------------------


def test_agreement_and_kappa_by_hand():
    # Model a: RB = 1,1,0,0 ; ours = 1,0,0,0 -> agreement 3/4.
    #   p_rb = 0.5, p_ours = 0.25, chance = 0.5*0.25 + 0.5*0.75 = 0.5, kappa = (0.75 - 0.5) / 0.5 = 0.5
    # Model b: RB = 1,0 ; ours = 1,0 -> agreement 1, kappa 1.
    df = fake_table(
        [("a", 1, 0, 1), ("a", 1, 0, 0), ("a", 0, 0, 0), ("a", 0, 0, 0), ("b", 1, 1, 1), ("b", 0, 0, 0)]
    )
    table = agreement_table(df).set_index("model")
    assert table.loc["a", "agreement"] == pytest.approx(0.75)
    assert table.loc["a", "kappa"] == pytest.approx(0.5)
    assert table.loc["a", "routerbench"] == pytest.approx(0.5)
    assert table.loc["a", "ours_raw"] == pytest.approx(0.0)
    assert table.loc["a", "ours_renamed"] == pytest.approx(0.25)
    assert (table.loc["a", "rb1_ours0"], table.loc["a", "rb0_ours1"]) == (1, 0)
    assert table.loc["b", "agreement"] == 1.0 and table.loc["b", "kappa"] == pytest.approx(1.0)
    # ALL pools the six answers: 5 of 6 agree.
    assert table.loc["ALL", "agreement"] == pytest.approx(5 / 6)
    report = agreement_report(df)
    assert report.splitlines()[2].split()[0] == "a" and "ALL" in report


def test_kappa_is_undefined_when_both_raters_are_constant_and_zero_for_independent_raters():
    assert math.isnan(cohens_kappa([1, 1], [1, 1]))
    # Independent: RB = 1,1,0,0 ; ours = 1,0,1,0 -> observed 0.5 = chance 0.5 -> kappa 0.
    assert cohens_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0)
