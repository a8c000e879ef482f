"""GGUF: the file llama.cpp, Ollama and LM Studio run, written by llama.cpp's converter from a merged folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ftlib.errors import FtlibError

GGUF_QUANTIZATIONS = {"q8_0": "Q8_0", "q4_k_m": "Q4_K_M", "f16": "F16"}

GGUF_STEPS = (
    "GGUF export needs llama.cpp's converter, which was not found. To install it:\n"
    "  git clone https://github.com/ggml-org/llama.cpp\n"
    "  pip install -r llama.cpp/requirements.txt                    # the converter's Python packages\n"
    "  cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build --target llama-quantize -j"
    "   # only for q4_k_m\n"
    "then pass llama_cpp_dir='llama.cpp' (or set LLAMA_CPP_DIR). Or convert by hand:\n"
    "  save(model, tokenizer, 'merged', method='merged_16bit')\n"
    "  python llama.cpp/convert_hf_to_gguf.py merged --outtype q8_0 --outfile model-q8_0.gguf"
)


def find_llama_cpp(llama_cpp_dir=None):
    """(converter script, llama-quantize binary or None) from llama_cpp_dir, LLAMA_CPP_DIR or PATH.

    Example:
        >>> find_llama_cpp("llama.cpp")  # doctest: +SKIP
    """
    folders = [Path(p).expanduser() for p in (llama_cpp_dir, os.environ.get("LLAMA_CPP_DIR")) if p]
    converter = next((f / "convert_hf_to_gguf.py" for f in folders if (f / "convert_hf_to_gguf.py").is_file()), None)
    if converter is None:
        found = shutil.which("convert_hf_to_gguf.py") or shutil.which("convert-hf-to-gguf")
        converter = Path(found) if found else None
    candidates = [path for folder in folders for path in (folder / "build" / "bin" / "llama-quantize",
                                                          folder / "llama-quantize")]
    quantizer = next((path for path in candidates if path.is_file() and os.access(path, os.X_OK)), None)
    if quantizer is None and shutil.which("llama-quantize"):
        quantizer = Path(shutil.which("llama-quantize"))
    return converter, quantizer


def gguf_plan(quantization, llama_cpp_dir=None):
    """(quantizations, converter, quantizer), checked before any work so a missing tool fails at once.

    Example:
        >>> quantizations, converter, quantizer = gguf_plan("q8_0", "llama.cpp")  # doctest: +SKIP
    """
    quantizations = [quantization] if isinstance(quantization, str) else list(quantization)
    for name in quantizations:
        if name not in GGUF_QUANTIZATIONS:
            raise FtlibError(f"unknown GGUF quantization {name!r}: use one of {sorted(GGUF_QUANTIZATIONS)} "
                             "(q8_0: near-lossless, half of 16-bit; q4_k_m: a quarter, small quality loss)")
    converter, quantizer = find_llama_cpp(llama_cpp_dir)
    if converter is None:
        raise FtlibError(GGUF_STEPS)
    if "q4_k_m" in quantizations and quantizer is None:
        raise FtlibError("q4_k_m needs llama.cpp's llama-quantize program, which was not found: "
                         "cmake -S llama.cpp -B llama.cpp/build && cmake --build llama.cpp/build "
                         "--target llama-quantize -j, then pass llama_cpp_dir='llama.cpp'; or use quantization='q8_0'")
    return quantizations, converter, quantizer


def _run(command):
    finished = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip()[-1500:]
        program = Path(str(command[1] if command[0] == sys.executable else command[0])).name
        raise FtlibError(f"{program} failed "
                         f"(exit {finished.returncode}):\n{tail}\nCheck that llama.cpp is up to date "
                         "(git pull) and supports this architecture.")


def write_gguf(folder, quantizations, converter, quantizer):
    written = []
    for name in quantizations:
        output = folder / f"model-{name}.gguf"
        if name == "q4_k_m":
            # The converter writes 16-bit; llama-quantize then makes the k-quant from it.
            intermediate = folder / "model-f16.gguf.partial"
            _run([sys.executable, converter, folder, "--outfile", intermediate, "--outtype", "f16"])
            _run([quantizer, intermediate, output, GGUF_QUANTIZATIONS[name]])
            intermediate.unlink(missing_ok=True)
        else:
            _run([sys.executable, converter, folder, "--outfile", output, "--outtype", name])
        written.append(output.name)
    return written
