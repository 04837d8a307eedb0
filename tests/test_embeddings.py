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


def test_precision_and_cap_are_checked_by_name():
    with pytest.raises(ValueError, match="precision"):
        PromptEmbedder(precision="int4")
    with pytest.raises(ValueError, match="onnx runtime"):
        PromptEmbedder(runtime="torch", precision="int8")
    with pytest.raises(ValueError, match="max_word_pieces"):
        PromptEmbedder(max_word_pieces=1000)


def test_the_decision_paths_precision_comes_from_its_setting(monkeypatch):
    from sysaware.estimators.embeddings import PRECISION_ENV, precision_from_env

    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert precision_from_env() == "fp32"  # fp32 stays the reference and the default
    monkeypatch.setenv(PRECISION_ENV, "INT8")
    assert precision_from_env() == "int8"
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match=PRECISION_ENV):
        precision_from_env()


def test_the_word_piece_cap_reads_a_prefix():
    # a long text and the same text with more after its 128th word piece: the same vector under the cap of 128
    long = " ".join(f"word{i}" for i in range(300))
    capped = PromptEmbedder(threads=1, runtime="onnx" if onnx_available() else "torch", max_word_pieces=16)
    a, b = capped.embed([long, long + " and a different ending entirely"])
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")
def test_int8_embeddings_stay_close_to_fp32_and_the_graph_is_built_once(monkeypatch):
    import onnxruntime.quantization

    from sysaware.estimators.embeddings import onnx_model_path, quantize_onnx, quantized_onnx_path

    path = quantize_onnx()  # built here if this cache has none yet
    assert path == quantized_onnx_path() and path.parent == onnx_model_path().parent
    stamp = path.stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the int8 graph was quantised again instead of read from the cache dir")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", no_rebuild)
    texts = [task_prompt(t.text, t.example_test) for t in load_tasks()[:20]]
    int8 = PromptEmbedder(threads=1, precision="int8").embed(texts)
    fp32 = PromptEmbedder(threads=1, precision="fp32").embed(texts)
    assert path.stat().st_mtime_ns == stamp
    cosine = (int8 * fp32).sum(axis=1)  # both unit-norm
    # measured over MBPP's 500 test tasks: min 0.985, mean 0.993 (per-tensor int8 weights: min 0.91)
    assert cosine.min() >= 0.97 and cosine.mean() >= 0.985, (cosine.min(), cosine.mean())
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
