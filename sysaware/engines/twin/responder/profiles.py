"""What the responder knows of each served model: its ability on MBPP, its size, how much it writes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sysaware.config import ModelDeployment
from sysaware.engines.twin.responder.irt import IrtModel
from sysaware.engines.twin.responder.params import ResponderParams
from sysaware.engines.twin.responder.verbosity import Verbosity, recorded_verbosity


@dataclass(frozen=True)
class ModelProfile:
    name: str  # served name
    recorded_as: str | None  # RouterBench column prefix
    ability: float  # IRT logits
    pass_rate: float  # mean P(correct) over the fitted tasks, fraction
    params_b: float  # total parameters, billions
    verbosity: Verbosity
    verbosity_from: str  # the recorded model whose answers set the verbosity
    relative_verbosity: float  # its median extra tokens over the median of all recorded open models


def build_profile(model: ModelDeployment, irt: IrtModel, params: ResponderParams) -> ModelProfile:
    """A recorded model speaks as its recordings do; any other borrows the verbosity of the recorded open model
    closest in size and gets the IRT ability that reproduces its published MBPP pass@1."""
    params_b = model.architecture.total_params() / 1e9
    if model.recorded_as is not None:
        if model.recorded_as not in irt.ability:
            raise KeyError(f"{model.name}: no recordings of {model.recorded_as!r} in the IRT fit")
        ability = irt.ability[model.recorded_as]
        verbosity_from = model.recorded_as
    else:
        assert model.mbpp_pass_at_1 is not None  # the config validator guarantees one of the two
        ability = irt.ability_for_pass_at_1(model.mbpp_pass_at_1)
        open_models = sorted(params.recorded_model_params_b.items(), key=lambda kv: kv[1])
        verbosity_from = min(open_models, key=lambda kv: abs(math.log(kv[1] / max(params_b, 1e-3))))[0]
    typical = float(np.median([recorded_verbosity(m).median_extra_tokens for m in params.recorded_model_params_b]))
    verbosity = recorded_verbosity(verbosity_from)
    return ModelProfile(
        name=model.name,
        recorded_as=model.recorded_as,
        ability=ability,
        pass_rate=irt.mean_p_correct(ability),
        params_b=params_b,
        verbosity=verbosity,
        verbosity_from=verbosity_from,
        relative_verbosity=verbosity.median_extra_tokens / typical,
    )
