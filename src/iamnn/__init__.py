"""iamnn: IamNN (Iterative and Adaptive Mobile Neural Network, Leroux et al. 2018) in PyTorch."""

from .cost import count_params, measure_macs
from .models import IamNN, IamNNStats, ResNet, create_model, list_models, register_model

__version__ = "0.1.0"
__all__ = [
    "IamNN",
    "IamNNStats",
    "ResNet",
    "create_model",
    "list_models",
    "register_model",
    "count_params",
    "measure_macs",
]
