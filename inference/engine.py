"""The engine: one per process, owning the local model cache (and, for remote calls, the HTTP client).

The cache is keyed by (model, task family, device, dtype). A model is loaded exactly once even when
many threads ask for it at the same moment; models are evicted least-recently-used when the memory
budget is exceeded, and ``unload`` really frees their memory.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .backends import loading
from .backends.loading import LoadedModel, resolve_device, resolve_dtype
from .errors import InferenceError, ModelLoadError
from .settings import DEFAULT_ENDPOINT, Settings
from .tasks import TaskSpec

__all__ = ["Engine", "get_engine"]

log = logging.getLogger(__name__)

CacheKey = tuple[str, str, str, str]  # (source, family, device, dtype)


@dataclass
class _Entry:
    loaded: LoadedModel
    load_ms: float
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    uses: int = 0


class Engine:
    """Owns loaded models and the remote HTTP client; safe to share between threads.

    Example:
        >>> engine = Engine()
        >>> model = load_model("hustvl/yolos-tiny", task="object-detection", engine=engine)
        >>> engine.status()["models"]
        >>> engine.unload("hustvl/yolos-tiny")
    """

    def __init__(self, settings: Settings | None = None, *, http_client: Any = None) -> None:
        self.settings = settings or Settings()
        self._lock = threading.Lock()
        self._models: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._loading: dict[CacheKey, Future] = {}
        self._http_client = http_client
        self._owns_http_client = http_client is None
        self._remote_clients: dict[tuple[Settings, str], Any] = {}

    # ------------------------------------------------------------------ models

    def get(self, source: str, spec: TaskSpec, device: str | None = None, dtype: str | None = None
            ) -> tuple[LoadedModel, float | None]:
        """The loaded model for ``source`` and ``spec``, loading it if needed.

        Returns:
            (model, load_ms) where ``load_ms`` is the load time when *this* call loaded it, else None.

        Raises:
            ModelLoadError: the model cannot be loaded (the error is not cached: a later call retries).
        """
        key = self._key(source, spec, device, dtype)
        _, _, device, dtype = key
        with self._lock:
            entry = self._models.get(key)
            if entry is not None:
                self._models.move_to_end(key)
                entry.last_used = time.time()
                entry.uses += 1
                return entry.loaded, None
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = self._loading[key] = Future()
        if not owner:
            # Another thread is loading this very model: wait for it instead of loading a second copy.
            loaded = future.result()
            return loaded, None
        started = time.perf_counter()
        try:
            log.info("loading %s for %s on %s (%s)", source, spec.name, device, dtype)
            loaded = loading.load(source, spec, device, dtype)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            error = exc if isinstance(exc, InferenceError) else ModelLoadError(f"model {source!r} could not be loaded: {exc}")
            future.set_exception(error)
            if error is exc:
                raise
            raise error from exc
        load_ms = (time.perf_counter() - started) * 1000
        log.info("loaded %s in %.0f ms (%s bytes)", source, load_ms, f"{loaded.memory_bytes:,}")
        with self._lock:
            self._models[key] = _Entry(loaded, load_ms, uses=1)
            del self._loading[key]
            evicted = self._evict_over_budget(keep=key)
        future.set_result(loaded)
        if evicted:
            self._release(evicted)
        return loaded, load_ms

    def is_loaded(self, source: str, spec: TaskSpec, device: str | None = None, dtype: str | None = None) -> bool:
        """Whether ``get`` would return at once (the model is in the cache, not loading)."""
        key = self._key(source, spec, device, dtype)
        with self._lock:
            return key in self._models

    def _key(self, source: str, spec: TaskSpec, device: str | None, dtype: str | None) -> CacheKey:
        device = resolve_device(device or self.settings.device)
        return (source, spec.family, device, resolve_dtype(dtype or self.settings.dtype, device))

    def budget_bytes(self) -> int:
        """The memory budget for all loaded models together."""
        if self.settings.max_model_memory is not None:
            return self.settings.max_model_memory
        return _default_budget(resolve_device(self.settings.device))

    def _evict_over_budget(self, keep: CacheKey) -> list[_Entry]:
        """Drop least-recently-used models until the rest fit the budget (caller holds the lock)."""
        budget = self.budget_bytes()
        evicted = []
        while sum(entry.loaded.memory_bytes for entry in self._models.values()) > budget:
            victim = next((key for key in self._models if key != keep), None)
            if victim is None:
                log.warning("model %s alone is larger than the memory budget of %s bytes", keep[0], f"{budget:,}")
                break
            log.info("evicting %s to stay within the memory budget", victim[0])
            evicted.append(self._models.pop(victim))
        return evicted

    def unload(self, model_id: str | None = None) -> int:
        """Unload ``model_id`` (every task/device/dtype of it), or every model when None.

        Returns the number of cache entries removed. Memory is returned to the system: the model objects
        are dropped, the GPU cache is emptied and, on glibc, freed heap pages are handed back.
        """
        with self._lock:
            keys = [key for key in self._models if model_id is None or key[0] == model_id]
            entries = [self._models.pop(key) for key in keys]
        self._release(entries)  # empties the list: count before
        return len(keys)

    def _release(self, entries: list[_Entry]) -> None:
        if not entries:
            return
        devices = {entry.loaded.device for entry in entries}
        # Drop our references only: a call still running on one of these models keeps it alive until it
        # returns, and the memory goes with its last reference.
        entries.clear()
        gc.collect()
        if any(device.startswith("cuda") for device in devices):
            import torch

            torch.cuda.empty_cache()
        _trim_heap()

    def loaded(self, model_id: str | None = None) -> list[LoadedModel]:
        """The loaded models (of ``model_id`` only, when given), least recently used first."""
        with self._lock:
            return [e.loaded for key, e in self._models.items() if model_id is None or key[0] == model_id]

    def status(self) -> dict[str, Any]:
        """Loaded models with device, dtype and bytes, plus the budget and the device this engine uses."""
        with self._lock:
            models = [
                {
                    "model_id": key[0], "family": key[1], "device": key[2], "dtype": key[3],
                    "memory_bytes": entry.loaded.memory_bytes, "load_ms": round(entry.load_ms, 1),
                    "loaded_at": entry.loaded_at, "last_used": entry.last_used, "uses": entry.uses,
                    "classes": list(entry.loaded.classes),
                }
                for key, entry in self._models.items()
            ]
            loading = [key[0] for key in self._loading]
        return {
            "device": describe_device(self.settings.device),
            "budget_bytes": self.budget_bytes(),
            "used_bytes": sum(model["memory_bytes"] for model in models),
            "models": models,
            "loading": loading,
        }

    # ------------------------------------------------------------------ remote

    def remote_client(self, settings: Settings | None = None, endpoint: str = DEFAULT_ENDPOINT):
        """The ``RemoteClient`` of ``endpoint`` (a name; default: the ``REMOTE_INFERENCE_*`` one) in ``settings``
        (default: the engine's). Every client shares one pooled httpx client.

        Raises:
            RemoteNotConfigured: no such endpoint; the message lists the configured ones.
        """
        import httpx

        from .backends.client import RemoteClient
        from .backends.transport import DeadlineTransport

        settings = settings or self.settings
        described = settings.endpoint(endpoint)
        with self._lock:
            client = self._remote_clients.get((settings, endpoint))
            if client is None:
                if self._http_client is None:
                    # keep-alive pool shared by every endpoint; HTTP/1.1 (h2 adds little for one request per call)
                    self._http_client = httpx.Client(
                        transport=DeadlineTransport(limits=httpx.Limits(max_connections=64, max_keepalive_connections=16)),
                        headers={"User-Agent": "inference-studio"},
                    )
                client = self._remote_clients[(settings, endpoint)] = RemoteClient(described, settings, self._http_client)
            return client

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Unload every model and close the HTTP client this engine created."""
        self.unload()
        if self._http_client is not None and self._owns_http_client:
            self._http_client.close()
            self._http_client = None
        self._remote_clients.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Engine models={len(self._models)} device={self.settings.device!r}>"


def describe_device(device: str = "auto") -> str:
    """A human name for the device, e.g. ``"cpu"`` or ``"cuda (NVIDIA A10G)"``."""
    if "torch" not in sys.modules and device == "auto":
        # Avoid importing torch just to draw a status line; the first load will tell.
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return "cpu (torch not installed)"
    resolved = resolve_device(device)
    if resolved == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    return resolved


def _default_budget(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    import psutil

    return int(psutil.virtual_memory().total * 0.5)


def _trim_heap() -> None:
    # NOTE: glibc keeps freed memory in its arenas; malloc_trim hands it back so RSS really drops.
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc: nothing to trim
            pass


_default_engine: Engine | None = None
_default_lock = threading.Lock()


def get_engine() -> Engine:
    """The process-wide engine, created on first use from the environment's ``Settings``."""
    global _default_engine
    with _default_lock:
        if _default_engine is None:
            _default_engine = Engine()
        return _default_engine
