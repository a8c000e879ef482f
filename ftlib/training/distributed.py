"""Several GPUs, one process each, through accelerate: DDP by default, FSDP2 for models one GPU cannot hold.

The same script runs on one GPU and under `torchrun --nproc_per_node N script.py` or `accelerate launch
script.py`: those launchers start N copies and set RANK, LOCAL_RANK and WORLD_SIZE in each. From a notebook,
`launch(function, num_processes=2)` starts them with accelerate's notebook launcher (Kaggle's "GPU T4 x2").
What changes when WORLD_SIZE > 1:

- `load_model` puts each process's copy of the model on its own GPU (`device_map={"": local_rank}`).
- `train` hands the trainer the settings that keep the math: every process computes its share of each
  global batch (per_device_train_batch_size rows, so effective batch = rows x accumulation x processes),
  gradients are averaged across processes, and the loss curve is the one a single process would log for
  the same global batch (tests/test_distributed.py checks it on the CPU with the gloo backend).
- Only the main process (rank 0) prints progress and draws plots; `save` writes from rank 0 only.
- A collective (gradient averaging, a barrier) waits at most `FTLIB_COLLECTIVE_TIMEOUT` seconds (1800 by
  default, as transformers) for the other processes, so a process that dies or hangs stops the run with an
  error that says so instead of leaving the others waiting for ever.

Why `ddp_find_unused_parameters=False`: ftlib checkpoints layers in PyTorch's reentrant form (ftlib/speed/),
whose first forward pass runs without autograd. DDP's search for unused parameters then counts every
checkpointed weight as unused, marks it ready, and marks it again when the recomputation's backward pass
reaches it: "Expected to mark a variable ready only once". Every trainable weight does get a gradient in
each step (the adapters sit in every layer), so the search is not needed; without it each weight is marked
once, in the recomputation's backward pass, and the averaged gradients are exact. (`static_graph=True` is
the other known workaround, but PyTorch's reducer fails with it when gradient accumulation skips
synchronisation on some micro-batches.)
"""

import contextlib
import functools
import os
import sys
from pathlib import Path

import torch

from ftlib.checks import check_positive
from ftlib.errors import FtlibError

DEFAULT_COLLECTIVE_TIMEOUT = 1800  # seconds; transformers' own default: long enough for a slow checkpoint save
FSDP_CHOICES = (None, False, True, "full_shard", "shard_grad_op")


def process_count():
    """How many training processes this run has (WORLD_SIZE, set by torchrun or accelerate); 1 without a launcher.

    Example: `process_count()  # 2 under torchrun --nproc_per_node 2`
    """
    return _environment_int("WORLD_SIZE", 1)


def process_rank():
    """This process's rank among all of them (RANK); 0 without a launcher. Example: `process_rank()`."""
    return _environment_int("RANK", 0)


def local_rank():
    """This process's rank on its machine (LOCAL_RANK), which is the GPU it uses. Example: `local_rank()`."""
    return _environment_int("LOCAL_RANK", 0)


def is_distributed():
    """True when a launcher started several processes for this run. Example: `is_distributed()`."""
    return process_count() > 1


def is_main_process():
    """True in the process that prints, plots and saves (rank 0); True without a launcher.

    Example: `if is_main_process(): print(history)`
    """
    return process_rank() == 0


def _environment_int(name, default):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as error:
        raise FtlibError(f"the environment variable {name}={value!r} is not a whole number: torchrun and accelerate "
                         f"launch set it themselves; unset it to train in one process") from error


def collective_timeout():
    """Seconds a process waits at a collective for the others (FTLIB_COLLECTIVE_TIMEOUT, else 1800)."""
    value = os.environ.get("FTLIB_COLLECTIVE_TIMEOUT")
    if value in (None, ""):
        return DEFAULT_COLLECTIVE_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise FtlibError(f"FTLIB_COLLECTIVE_TIMEOUT={value!r} is not a positive number of seconds: set it to e.g. "
                         "1800 (the default), or unset it")
    return int(max(1, seconds))


def rank_device_map():
    """The device_map that puts this process's model on its own GPU: {"": local_rank}; None without a launcher.

    Example: `rank_device_map()  # {'': 1} in the second process of torchrun --nproc_per_node 2`

    On a machine without a CUDA GPU every process stays on the CPU (None: load_model's CPU default).
    """
    if not is_distributed() or not torch.cuda.is_available():
        return None
    rank = local_rank()
    count = torch.cuda.device_count()
    if rank >= count:
        raise FtlibError(f"this is process {rank} on this machine but it has {count} GPU{'s' if count != 1 else ''}: "
                         f"start at most {count} processes per machine (torchrun --nproc_per_node {count})")
    return {"": rank}


def check_fsdp(fsdp):
    """Refuse an fsdp setting train does not know, before any weight changes. Example: `check_fsdp(True)`."""
    if not any(fsdp is choice or (isinstance(fsdp, str) and fsdp == choice) for choice in FSDP_CHOICES):
        raise FtlibError(f"fsdp must be one of None, True, 'full_shard', 'shard_grad_op', got {fsdp!r}: try True "
                         "(shard weights, gradients and optimizer state over the GPUs), 'shard_grad_op' (whole "
                         "weights kept between forward and backward: faster, more memory) or None (DDP)")
    if fsdp and not is_distributed():
        raise FtlibError(f"fsdp={fsdp!r} shards the model over several processes, but this is one process: start the "
                         "script with torchrun --nproc_per_node 2 (or accelerate launch), or call "
                         "ftlib.launch(function, num_processes=2) from a notebook; leave fsdp out on one GPU")


def decoder_layer_classes(model):
    """Names of the model's repeated decoder-layer classes, FSDP's unit of sharding. Example: ['LlamaDecoderLayer']."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = list(getattr(base, "_no_split_modules", None) or [])
    present = {type(module).__name__ for module in base.modules()}
    return [name for name in names if name in present] or sorted(
        name for name in present if name.endswith("DecoderLayer"))


def fsdp_settings(model, fsdp):
    """SFTConfig keyword arguments for FSDP2 (accelerate's fully_shard): {} when fsdp is off.

    Example: `SFTConfig(output_dir="outputs", **fsdp_settings(model, True))`

    Each decoder layer is one shard unit (auto-wrap by class), so a GPU holds a layer's whole weights only
    while it computes that layer. "full_shard" frees them again after the forward pass (least memory);
    "shard_grad_op" keeps them until the backward pass (less communication). The full state dict is
    gathered for saving, so `save` writes one ordinary adapter or model folder.
    """
    if not fsdp:
        return {}
    strategy = "full_shard" if fsdp is True else fsdp
    return {
        "fsdp": f"{strategy} auto_wrap",
        "fsdp_config": {
            "fsdp_version": 2,
            "transformer_layer_cls_to_wrap": decoder_layer_classes(model),
            "reshard_after_forward": strategy == "full_shard",
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": False,  # each process already loaded the model (load_model)
        },
    }


def trainer_settings(model, fsdp=None):
    """SFTConfig keyword arguments for a run of several processes; {} in a single process.

    Example: `SFTConfig(output_dir="outputs", **trainer_settings(model))`

    DDP without the unused-parameter search (see the module's docstring), gloo on a CPU (`use_cpu`: accelerate
    runs several CPU processes only when asked), and the collective timeout.
    """
    if not is_distributed():
        return {}
    settings = {"ddp_find_unused_parameters": False, "ddp_timeout": collective_timeout()}
    if next(model.parameters()).device.type != "cpu":
        return settings | fsdp_settings(model, fsdp)
    if fsdp and is_main_process():  # accelerate shards only on GPUs (and other accelerators), never on a CPU
        print(f"note: fsdp={fsdp!r} shards the model on GPUs only; these CPU processes train with DDP, a whole copy "
              "each, which computes the same result")
    return settings | {"use_cpu": True}


def progress_callbacks_here(callbacks):
    """The callbacks this process runs: all of them on rank 0; elsewhere those that draw or print are left out.

    Example: `progress_callbacks_here([LiveLossPlot()])  # [] on rank 1`
    """
    if is_main_process():
        return list(callbacks or [])
    return [callback for callback in callbacks or [] if not getattr(callback, "shows_progress", False)]


def wait_for_everyone():
    """A barrier: every process of the run waits here until all have arrived; nothing to wait for in one process.

    Example: `wait_for_everyone()  # after rank 0 wrote a file the others read`

    Joins the processes (accelerate's PartialState, with the collective timeout) if no train() did yet; a
    process that does not arrive within FTLIB_COLLECTIVE_TIMEOUT seconds stops the others with an FtlibError.
    """
    if not is_distributed() or not torch.distributed.is_available():
        return
    from datetime import timedelta

    from accelerate import PartialState

    try:
        if not torch.distributed.is_initialized():
            PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(seconds=collective_timeout()))
        torch.distributed.barrier()
    except Exception as error:
        failure = collective_failure(error)
        if failure is None:
            raise
        raise failure from error


@contextlib.contextmanager
def main_process_writes():
    """Within the block rank 0 writes; every process leaves it together, after the write is complete.

    Example:
        with main_process_writes() as writing:
            if writing:
                model.save_pretrained(path)
    """
    try:
        yield is_main_process()
    finally:
        wait_for_everyone()


def collective_failure(error):
    """An FtlibError for an error a collective raised (another process died or hung), or None for other errors."""
    text = str(error)
    signs = ("timed out", "Timeout", "timeout", "DistStoreError", "Connection closed by peer",
             "Connection reset by peer", "NCCL", "Gloo", "gloo", "ProcessGroup", "DistBackendError")
    if not is_distributed() or not any(sign in text or sign in type(error).__name__ for sign in signs):
        return None
    return FtlibError(
        f"process {process_rank()} of {process_count()} stopped: a collective operation with the other processes "
        f"failed ({type(error).__name__}: {text.strip().splitlines()[0][:300]}). Another process most likely failed "
        f"or hung first; its own error is printed above. Fix that error and start the run again (a process waits "
        f"at most FTLIB_COLLECTIVE_TIMEOUT={collective_timeout()} s for the others)"
    )


def launch(function, *args, num_processes=2, timeout=DEFAULT_COLLECTIVE_TIMEOUT, port=29500, quiet_ranks=True):
    """Run `function(*args)` in `num_processes` processes, one per GPU, from a notebook; returns rank 0's result.

    Example:
        >>> def run():
        ...     model, tokenizer = load_model("ftlib-tiny")
        ...     return train(add_lora(model), tokenizer, dataset, max_steps=60)
        >>> history = launch(run, num_processes=2)  # doctest: +SKIP

    Uses accelerate's notebook launcher, which forks the notebook's process: everything that touches the
    GPU (load_model, train, save) must happen inside `function`. Once a cell has used the GPU (a setup cell
    that reads its memory does), forked processes cannot; launch then starts fresh processes instead, which
    import `function` by name, so it must come from a module (a .py file), not a notebook cell. Each process
    sees RANK, LOCAL_RANK and WORLD_SIZE, so load_model, train and save inside `function` behave as under
    torchrun. On a machine without GPUs the processes run on the CPU (gloo): the mechanics, not the speed.

    num_processes: 2 for Kaggle's two T4s; at most the number of GPUs (any number on a CPU).
    timeout: seconds a process waits at a collective for the others before the run stops with an error.
    port: a free TCP port on this machine for the processes to meet; change it if 29500 is taken.
    quiet_ranks: True sends what ranks other than 0 print to nowhere (their errors still show).
    """
    check_positive("num_processes", num_processes, "2 (one process per GPU)")
    check_positive("timeout", timeout, "1800 seconds", whole=False)
    if not callable(function):
        raise FtlibError(f"launch needs a function to run in each process, got {type(function).__name__}: define "
                         "def run(): ... (load, train, save inside it) and call launch(run, num_processes=2)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and num_processes > gpus:
        raise FtlibError(f"num_processes={num_processes} but this machine has {gpus} GPU{'s' if gpus != 1 else ''}: "
                         f"use num_processes={gpus}")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ftlib-launch-") as folder:
        body = _RankBody(function, folder, quiet_ranks)
        previous = os.environ.get("FTLIB_COLLECTIVE_TIMEOUT")
        os.environ["FTLIB_COLLECTIVE_TIMEOUT"] = str(int(timeout))
        try:
            if gpus and torch.cuda.is_initialized():  # a forked process cannot use CUDA its parent set up
                _spawn(body, args, num_processes, port)
            else:
                _notebook_launcher(body, args, num_processes, port, gpus)
        except Exception as error:
            raise _launch_failure(error, num_processes, folder) from error
        finally:
            _restore_environment("FTLIB_COLLECTIVE_TIMEOUT", previous)
        result_file = os.path.join(folder, "result.pt")
        return torch.load(result_file, weights_only=False) if os.path.exists(result_file) else None


def _notebook_launcher(body, args, num_processes, port, gpus):
    """accelerate's notebook launcher, after clearing the state a train() earlier in this notebook left behind."""
    import unittest.mock

    from accelerate import launchers
    from accelerate.state import AcceleratorState

    # A finished single-process train() leaves accelerate's state set, which the launcher refuses; train()
    # itself resets it for every run, so clearing it here changes nothing a later train() sees.
    AcceleratorState._reset_state(reset_partial_state=True)
    checks = contextlib.nullcontext()
    if not gpus:  # the launcher refuses once bitsandbytes is imported (it may touch CUDA); no CUDA here to touch
        checks = unittest.mock.patch.object(launchers, "are_libraries_initialized", lambda *names: [])
    where = f"{num_processes} GPUs" if gpus else "the CPU (gloo)"
    print(f"Launching {num_processes} processes on {where}.", flush=True)
    with checks, contextlib.redirect_stdout(_WithoutLine(sys.stdout, "Launching training on")):
        launchers.notebook_launcher(body, args, num_processes=num_processes, use_port=str(port))


class _WithoutLine:
    """A text stream that passes everything on to `stream` except lines starting with `prefix`.

    accelerate announces "Launching training on N CUDAs." even on a CPU; launch prints its own line instead.
    """

    def __init__(self, stream, prefix):
        self.stream, self.prefix = stream, prefix

    def write(self, text):
        if text.startswith(self.prefix):
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _spawn(body, args, num_processes, port):
    """Start fresh processes (not forks) through torch's elastic launcher, the engine of accelerate's launcher.

    Used once this notebook has touched the GPU (a setup cell that read its memory does): a forked process
    cannot use CUDA then. A fresh process imports `function` by name, so it must live in a module (as
    ftlib.demo.runs.headline_fine_tune does), not in a notebook cell.
    """
    import pickle

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    try:
        pickle.dumps(body)
    except Exception as error:
        raise FtlibError(
            f"this notebook already used the GPU, so launch must start fresh processes, which import the function "
            f"by name, and {getattr(body.function, '__name__', 'it')} cannot be imported ({type(error).__name__}): "
            "put the function in a .py file next to the notebook and import it, or restart the kernel and call "
            "launch before any cell uses the GPU"
        ) from error
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=num_processes, run_id="ftlib-launch",
                          rdzv_endpoint=f"127.0.0.1:{port}", rdzv_backend="static", rdzv_configs={"rank": 0},
                          max_restarts=0, monitor_interval=0.1, start_method="spawn")
    elastic_launch(config=config, entrypoint=body)(*args)


class _RankBody:
    """What each launched process runs: `function`; rank 0's result and any process's error go to files in `folder`.

    A class, not a closure, so that fresh (spawned) processes can receive it by pickling.
    """

    def __init__(self, function, folder, quiet_ranks):
        self.function, self.folder, self.quiet_ranks = function, folder, quiet_ranks
        # the launchers name the run after these
        self.__name__ = getattr(function, "__name__", "function")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)

    def __call__(self, *args):
        quiet = self.quiet_ranks and not is_main_process()
        try:
            with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere if quiet else sys.stdout):
                result = self.function(*args)
        except BaseException as error:
            with open(os.path.join(self.folder, f"error-{process_rank()}.txt"), "w") as file:
                file.write(f"{type(error).__name__}: {error}")
            raise
        if is_main_process() and result is not None:
            try:
                torch.save(result, os.path.join(self.folder, "result.pt"))
            except Exception as error:  # noqa: BLE001  (a result that cannot be pickled: the run succeeded)
                print(f"note: launch could not hand back the function's result ({type(error).__name__}: {error}); "
                      "return something simpler (numbers, lists, a TrainingHistory), or save it to a file")


def _restore_environment(name, value):
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _launch_failure(error, num_processes, folder):
    """An FtlibError naming the process that failed first and its error (from the file its _RankBody wrote)."""
    errors = sorted(Path(folder).glob("error-*.txt"), key=lambda path: path.stat().st_mtime)
    if errors:
        rank = errors[0].stem.split("-")[1]
        text = errors[0].read_text().strip()
        where = f"process {rank} of {num_processes} failed first ({text[:600]})"
    else:
        where = f"the run of {num_processes} processes failed ({type(error).__name__}: {str(error).strip()[:400]})"
    return FtlibError(f"{where}; the other processes were stopped. Fix that error and launch again (run the "
                      "function in one process, launch(function, num_processes=1), to see its full traceback)")


def written_by_main_process(function):
    """Decorate a function that writes files (`save`): under several processes rank 0 runs it, the others wait.

    Example: `save = written_by_main_process(save)`

    Every process leaves together once the files are complete, so none reads a half-written folder; the other
    processes get None. In one process the function simply runs.
    """

    @functools.wraps(function)
    def on_main_process(*args, **kwargs):
        if not is_distributed():
            return function(*args, **kwargs)
        model = args[0] if args else kwargs.get("model")
        with whole_weights_on_main_process(model), main_process_writes() as writing:
            return function(*args, **kwargs) if writing else None

    return on_main_process


def is_sharded(model):
    """True when FSDP2 split the model's weights over the processes (its parameters are DTensors)."""
    if not isinstance(model, torch.nn.Module):
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


@contextlib.contextmanager
def whole_weights_on_main_process(model):
    """Within the block rank 0's `model` holds whole weights in place of the shards FSDP2 split it into.

    Example:
        with whole_weights_on_main_process(model):
            if is_main_process():
                model.save_pretrained("my-adapter")  # one ordinary adapter, not one shard per process

    Gathering is a collective: every process enters the block. Each weight is gathered in turn and kept in
    CPU memory, so a model whose shards fill the GPUs can still be saved; the shards are put back when the
    block ends. Everything a save reads (the weights, the NaN check, the state dict) then sees one ordinary
    model, so rank 0 runs it alone. An unsharded model passes through unchanged.
    """
    if not is_sharded(model):
        yield
        return
    from torch.distributed.tensor import DTensor

    shards = []
    for module in model.modules():
        for name, parameter in list(module._parameters.items()):
            if isinstance(parameter, DTensor):
                whole = parameter.full_tensor().cpu()  # every process takes part, in the same order
                shards.append((module, name, parameter))
                if is_main_process():
                    module._parameters[name] = torch.nn.Parameter(whole, requires_grad=parameter.requires_grad)
    try:
        yield
    finally:
        for module, name, parameter in shards:
            module._parameters[name] = parameter
