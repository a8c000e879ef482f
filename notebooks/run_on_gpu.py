"""Run the eight notebooks top to bottom on a GPU machine and record pass/fail, time and peak GPU memory.

    python notebooks/run_on_gpu.py OUT_FOLDER [--random-llama FOLDER] [--parallel 8] [--deadline S] [--only 04,06]

--random-llama FOLDER first writes a Llama-3.2-1B-shaped model with random weights to FOLDER (the
published architecture numbers; the tiny demo model's tokenizer, since no download is possible) and
points FTLIB_MODEL at it, so the notebooks load a real-sized model in 4 bits. Speed and memory do not
depend on the weights' values, so this measures what a real 1B model would need. Outputs are not
compared with the saved ones (those belong to the tiny model): a notebook passes when every cell runs.
Each notebook runs in its own kernel; the peak is PyTorch's max_memory_reserved inside that kernel. Each
code cell's time goes to OUT_FOLDER/<notebook>.log as it finishes and into the result.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBE = ("import json, torch\n"
         "print('PEAK', json.dumps({'peak_reserved_gb': torch.cuda.max_memory_reserved() / 2**30 "
         "if torch.cuda.is_available() else None}))")


def make_random_llama(folder):
    """Save a Llama-3.2-1B-shaped model with random weights and the demo tokenizer to `folder`."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftlib.demo import tiny_model_path

    config = LlamaConfig(  # Llama-3.2-1B's published config.json numbers
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=500000.0,
        bos_token_id=0, eos_token_id=1, pad_token_id=2,  # the demo tokenizer's special tokens
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(Path(tiny_model_path()) / name, Path(folder) / name)
    print(f"wrote a random Llama-3.2-1B-shaped model ({model.num_parameters():,} parameters) to {folder}")


def run_one(path, out_folder):
    """Execute one notebook in a fresh kernel; write its result as JSON beside the executed copy."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(HERE)}})
    result = {"notebook": path.name, "passed": False, "error": None, "seconds": None, "peak_reserved_gb": None,
              "cell_seconds": {}}
    started = time.time()
    with client.setup_kernel():
        try:
            for index, cell in enumerate(notebook.cells):
                cell_started = time.time()
                client.execute_cell(cell, index)
                if cell.cell_type == "code":  # logged as it goes, so a run stopped at the deadline still shows where
                    result["cell_seconds"][index] = round(time.time() - cell_started, 1)
                    print(f"{path.name} cell {index}: {result['cell_seconds'][index]} s", flush=True)
            result["passed"] = True
        except CellExecutionError as error:
            result["error"] = f"cell {index}: {str(error).strip().splitlines()[-1][:300]}"
        result["seconds"] = round(time.time() - started, 1)
        probe = nbformat.v4.new_code_cell(PROBE)
        notebook.cells.append(probe)
        client.execute_cell(probe, len(notebook.cells) - 1)
        notebook.cells.pop()
        for output in probe.outputs:
            if output.get("name") == "stdout" and "PEAK" in output.text:
                result.update(json.loads(output.text.split("PEAK", 1)[1]))
    nbformat.write(notebook, out_folder / path.name)
    (out_folder / f"{path.stem}.json").write_text(json.dumps(result))
    return result


def main(arguments):
    out_folder = Path(arguments[0])
    out_folder.mkdir(parents=True, exist_ok=True)
    if "--one" in arguments:
        run_one(Path(arguments[arguments.index("--one") + 1]), out_folder)
        return
    if "--random-llama" in arguments:
        folder = arguments[arguments.index("--random-llama") + 1]
        make_random_llama(folder)
        os.environ["FTLIB_MODEL"] = folder
    parallel = int(arguments[arguments.index("--parallel") + 1]) if "--parallel" in arguments else 8
    # stop whatever still runs after this many seconds, so a result comes back within the machine's lease
    deadline = float(arguments[arguments.index("--deadline") + 1]) if "--deadline" in arguments else 3600
    paths = sorted(HERE.glob("0[1-8]_*.ipynb"))
    if "--only" in arguments:  # e.g. --only 04,06
        wanted = arguments[arguments.index("--only") + 1].split(",")
        paths = [path for path in paths if path.name[:2] in wanted]
    started, waiting, running = time.time(), list(paths), {}
    while waiting or running:
        for path, process in list(running.items()):
            if process.poll() is not None:
                del running[path]
        while waiting and len(running) < parallel:
            path = waiting.pop(0)
            log = open(out_folder / f"{path.stem}.log", "w")
            running[path] = subprocess.Popen([sys.executable, __file__, str(out_folder), "--one", str(path)],
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if time.time() - started > deadline:
            for process in running.values():
                os.killpg(process.pid, signal.SIGKILL)  # the notebook's kernel goes with it
            break
        time.sleep(1)
    results = []
    for path in paths:
        result_file = out_folder / f"{path.stem}.json"
        if result_file.is_file():
            results.append(json.loads(result_file.read_text()))
        else:
            reason = f"stopped at the {deadline:.0f} s deadline" if path in running else "did not start or crashed"
            results.append({"notebook": path.name, "passed": False, "error": reason})
    summary = {"model": os.environ.get("FTLIB_MODEL"), "wall_seconds": round(time.time() - started, 1),
               "parallel": parallel, "results": results}
    (out_folder / "results.json").write_text(json.dumps(summary, indent=1))
    for result in results:
        print(json.dumps(result))
    print(f"all done in {summary['wall_seconds']} s")


if __name__ == "__main__":
    main(sys.argv[1:])
