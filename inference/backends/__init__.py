"""Where requests run. Each backend implements ``base.Backend``; a protocol is one module.

- ``local``: transformers + torch in this process (``loading`` loads the models, the engine caches them).
- ``studio``: the studio's multipart protocol (our reference server), over ``client`` and ``transport``.
- ``openai``: the OpenAI-compatible API (vLLM, TGI, SGLang, Ollama, llama.cpp's server, our server's ``/v1``).
- ``hf``: Hugging Face's TGI and Inference Endpoints (one deployed model per URL).

Modules are imported where they are used: ``import inference`` loads neither torch nor httpx's machinery.
"""


def protocol_backend(protocol: str) -> type:
    """The backend class of a remote protocol (``Endpoint.protocol``): adding a protocol is one module and one line."""
    if protocol == "studio":
        from .studio import StudioBackend

        return StudioBackend
    if protocol == "openai":
        from .openai import OpenAIBackend

        return OpenAIBackend
    if protocol == "hf":
        from .hf import HFBackend

        return HFBackend
    raise ValueError(f"no backend speaks {protocol!r}")


def endpoint_status(client) -> tuple[bool, str, list[dict]]:
    """(reachable, what it says, served models) of a client's endpoint, asked the way its protocol asks."""
    from ..errors import InferenceError

    try:
        message, models = protocol_backend(client.probe()).status(client)
    except InferenceError as exc:
        return False, str(exc), []
    return True, message, models
