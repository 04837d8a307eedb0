"""vLLM's ``ignore_eos`` and ``min_tokens`` on the twin: an answer shorter than allowed is extended with filler.

A real model ends its answer by sampling EOS; ``min_tokens`` forbids that before so many tokens, ``ignore_eos``
forbids it altogether, so the request runs until ``max_tokens`` cuts it (finish_reason "length"). Load generators
(``vllm bench serve``, guidellm) rely on this to fix output lengths. The twin decides the whole answer when the
request arrives, so its equivalent is a longer answer: the responder's text, then filler up to the floor.
"""

from __future__ import annotations

from sysaware.engines.twin.protocols import Response
from sysaware.engines.types import GenerationRequest

# One token in the twin's WordPiece tokenizer and in Llama/Mistral-style BPE vocabularies alike.
FILLER = " the"


def length_floor(request: GenerationRequest) -> int:
    """Output tokens the answer must have before it may end. Under ``ignore_eos`` one more than ``max_tokens``: the
    answer never ends by itself, so ``max_tokens`` ends it, as a length cap."""
    return request.max_tokens + 1 if request.ignore_eos else request.min_tokens


def at_least(response: Response, floor: int) -> Response:
    """``response``, extended with one FILLER per missing token when it is shorter than ``floor`` tokens."""
    missing = floor - response.output_tokens
    if missing <= 0:
        return response
    return Response(text=response.text + FILLER * missing, output_tokens=floor)
