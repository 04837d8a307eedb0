"""A tiny Llama built in code, so that real vLLM runs on a CPU machine with nothing downloaded.

The folder holds what vLLM reads from a Hugging Face checkpoint: ``config.json`` (a 2-layer ``LlamaForCausalLM``,
hidden 128) and a tokenizer (byte-level BPE trained here, in code, on a fixed text: ~260 tokens, every byte
representable). There are no weights: vLLM loads it with ``load_format="dummy"`` (random weights), so what it says is
noise, but the engine does all of its real work: scheduling, chunked prefill, paged KV blocks, preemption, sampling,
detokenization, streaming. That is what the engine backend and the twin's check need.

``ensure_tiny_model(root)`` writes the folder once (the files are a pure function of this module: a stamp names the
spec, so a changed spec rebuilds it) and returns its path. Only the ``tokenizers`` library is needed, which the base
install has.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# The model: Llama shape, small enough that a step costs milliseconds on one CPU core.
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 2,
    "vocab_size": 264,  # set to the trained tokenizer's size, rounded up to a multiple of 8
}
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")
TOKENIZER_VOCAB = 262  # 256 bytes + 3 specials + a few merges
# A plain chat template (the tokenizer has no role tokens): what apply_chat_template renders for vLLM's OpenAI server.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_TRAINING_TEXT = (
    "def is_not_prime(n):\n    for i in range(2, n):\n        if n % i == 0:\n            return True\n"
    "    return False\n"
) * 4
DEFAULT_NAME = "tiny-llama"


def _spec_hash() -> str:
    spec = json.dumps([TINY_CONFIG, SPECIAL_TOKENS, TOKENIZER_VOCAB, CHAT_TEMPLATE, _TRAINING_TEXT], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def build_tokenizer():
    """A byte-level BPE tokenizer (``tokenizers.Tokenizer``), trained deterministically on a fixed code snippet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TRAINING_TEXT], trainer)
    return tok


def write_tiny_model(folder: Path) -> Path:
    """Write config.json, tokenizer.json, tokenizer_config.json and generation_config.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    config = dict(TINY_CONFIG, vocab_size=-(-vocab // 8) * 8)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config.update(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "add_bos_token": False,
        "model_max_length": config["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
    }, indent=2))
    return folder


def default_cache_dir() -> Path:
    """Where built model folders live: $SYSAWARE_CACHE, else ~/.cache/sysaware."""
    return Path(os.environ.get("SYSAWARE_CACHE") or Path.home() / ".cache" / "sysaware")


def ensure_tiny_model(root: Path | None = None, name: str = DEFAULT_NAME) -> Path:
    """The tiny model's folder under ``root`` (default: the cache dir), built on first use or when the spec changed.
    Written to a temporary folder and renamed, so a concurrent or interrupted build never leaves half a model."""
    root = Path(root) if root is not None else default_cache_dir()
    folder = root / f"{name}-{_spec_hash()}"
    if (folder / "config.json").exists():
        return folder
    tmp = root / f".{folder.name}.{os.getpid()}"
    write_tiny_model(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process won the race: theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_architecture() -> dict:
    """The model's shape in the pool file's terms (config.ModelArchitecture fields)."""
    return {
        "num_layers": TINY_CONFIG["num_hidden_layers"],
        "hidden_size": TINY_CONFIG["hidden_size"],
        "num_attention_heads": TINY_CONFIG["num_attention_heads"],
        "num_key_value_heads": TINY_CONFIG["num_key_value_heads"],
        "intermediate_size": TINY_CONFIG["intermediate_size"],
        "vocab_size": TINY_CONFIG["vocab_size"],
        "max_position_embeddings": TINY_CONFIG["max_position_embeddings"],
    }


if __name__ == "__main__":
    import sys

    print(ensure_tiny_model(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
