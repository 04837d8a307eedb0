"""What F_len embeds of a prompt (its task), and the serving embedder: one thread, either runtime, same vectors."""

from __future__ import annotations

import numpy as np
import pytest

from sysaware.estimators.embeddings import PromptEmbedder, onnx_available
from sysaware.estimators.features import embedded_text
from sysaware.orchestration.messages import UpstreamOutput, build_messages, prompt_text
from sysaware.orchestration.topology import Slot
from sysaware.tasks.mbpp import load_tasks
from sysaware.tasks.prompts import ROLES, Strategy, task_in_prompt, task_prompt


def test_every_step_of_a_task_embeds_the_same_task_text():
    task = load_tasks()[3]
    plain = prompt_text(build_messages(task, Slot("a", "programmer"), strategy=Strategy.FLASH))
    later = prompt_text(build_messages(
        task, Slot("b", "decision_maker"),
        upstream=[UpstreamOutput(Slot("a", "programmer"), "```python\ndef f():\n    return 1\n```")],
        strategy=Strategy.DEEPTHINK,
    ))
    assert plain != later
    assert task_in_prompt(plain) == task_in_prompt(later) == task_prompt(task.text, task.example_test)
    assert embedded_text(later, "task") == task_prompt(task.text, task.example_test)
    assert embedded_text(later, "prompt") == later


def test_a_prompt_without_an_mbpp_task_embeds_its_first_paragraph():
    system = ROLES["reviewer"].system_prompt
    assert task_in_prompt(f"{system}\nReview this.\n\nMore context") == "Review this."
    assert task_in_prompt("Write a function that adds two numbers.") == "Write a function that adds two numbers."


def test_the_serving_embedder_leaves_torch_threads_alone():
    import torch

    before = torch.get_num_threads()
    embedder = PromptEmbedder(threads=1, runtime="torch")
    vec = embedder.embed(["Write a function that adds two numbers."])
    assert vec.shape == (1, 384) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    assert torch.get_num_threads() == before


@pytest.mark.slow
@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_onnx_runtime_gives_the_vectors_of_sentence_transformers():
    texts = [task_prompt(t.text, t.example_test) for t in load_tasks()[:6]] + ["short", "x " * 400]
    reference = PromptEmbedder(runtime="torch").embed(texts)
    onnx = PromptEmbedder(threads=1, runtime="onnx")
    np.testing.assert_allclose(onnx.embed(texts), reference, atol=2e-6)  # batched, padded
    np.testing.assert_allclose(np.concatenate([PromptEmbedder(threads=1, runtime="onnx").embed([t]) for t in texts]),
                               reference, atol=2e-6)  # one at a time, as a decision embeds
