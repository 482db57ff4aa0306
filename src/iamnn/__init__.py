"""iamnn: IamNN (Iterative and Adaptive Mobile Neural Network, Leroux et al. 2018) in PyTorch."""

from .cost import count_params, measure_macs
from .models import (
    ACT,
    Fixed,
    Full,
    HaltingPolicy,
    IamNN,
    IamNNStats,
    MobileNet,
    PonderNet,
    ResNet,
    list_models,
    register_model,
)
from .models.halting import register_policy
from .predict import Prediction, predict  # noqa: E402 - after the modules it uses; shadows the submodule's name
from .weights import create_model, load_model

__version__ = "0.1.0"
__all__ = [
    # building and loading models
    "create_model", "list_models", "load_model", "register_model", "IamNN", "IamNNStats", "ResNet",
    "MobileNet",
    # halting policies
    "HaltingPolicy", "ACT", "Fixed", "Full", "PonderNet", "register_policy",
    # inference
    "predict", "Prediction",
    # cost
    "count_params", "measure_macs",
]  # fmt: skip
