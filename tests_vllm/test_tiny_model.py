"""The tiny model built in code is one vLLM's tokenizer stack reads like a downloaded checkpoint."""

from __future__ import annotations

import json

from sysaware.engines.vllm.tiny_model import ensure_tiny_model


def test_the_tiny_model_folder_loads_in_transformers(tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    folder = ensure_tiny_model(tmp_path)
    assert ensure_tiny_model(tmp_path) == folder  # built once
    config = AutoConfig.from_pretrained(folder)
    assert config.architectures == ["LlamaForCausalLM"] and config.num_hidden_layers == 2
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) <= config.vocab_size
    text = "def is_not_prime(n):\n    return n % 2 == 0  # ünïcode"
    assert tok.decode(tok(text).input_ids) == text  # byte-level: every text round-trips
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "user: hi\nassistant:"
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == tok.eos_token_id
