"""Inference Studio's inference package: run Hugging Face models locally or on a remote endpoint.

    >>> from inference import load_model
    >>> det = load_model("hustvl/yolos-tiny", task="object-detection")
    >>> det("photo.jpg", threshold=0.5).detections

``import inference`` does not import torch or transformers; they load with the first local model.
"""

from .engine import Engine, get_engine
from .errors import (
    AuthenticationError,
    BadResponse,
    InferenceError,
    InferenceTimeout,
    InvalidInput,
    ModelLoadError,
    RateLimited,
    RemoteNotConfigured,
    RemoteUnavailable,
    UnsupportedTask,
)
from .images import load_image
from .model import Model, load_model
from .settings import Settings
from .tasks import TASKS, get_task
from .types import DetectionResult, ModelInfo, TextResult, TextStream, Timings

__all__ = [
    "TASKS",
    "AuthenticationError",
    "BadResponse",
    "DetectionResult",
    "Engine",
    "InferenceError",
    "InferenceTimeout",
    "InvalidInput",
    "Model",
    "ModelInfo",
    "ModelLoadError",
    "RateLimited",
    "RemoteNotConfigured",
    "RemoteUnavailable",
    "Settings",
    "TextResult",
    "TextStream",
    "Timings",
    "UnsupportedTask",
    "get_engine",
    "get_task",
    "load_image",
    "load_model",
]
