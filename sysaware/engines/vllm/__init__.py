"""backend vllm: the engine (engine.py), its stat logger (stats.py), vLLM's OpenAI server (server.py), the step-by-step
replay for twin-check (replay.py) and the tiny model built in code (tiny_model.py). Only engine.py, replay.py and
server.py's children import vLLM, lazily: importing this package needs no vLLM."""
