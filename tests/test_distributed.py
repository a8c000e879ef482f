"""Several processes on the CPU (gloo): the same training as one process, one saved adapter, clear failures.

`ftlib.launch` starts the processes with accelerate's notebook launcher, as a notebook on Kaggle's two
T4s would; on a CPU they meet over gloo. Gradient checkpointing is on (reentrant, ftlib's default form),
which DDP's unused-parameter search would break ("Expected to mark a variable ready only once").
"""

import time

import pytest
import torch

from ftlib.errors import FtlibError
from ftlib.training import distributed

STEPS = 4
GLOBAL_BATCH = 4  # rows per micro-batch over all processes; x 2 accumulation = 8 rows a step


def _fine_tune(processes, save_to=None):
    """Train ftlib-tiny's adapters for STEPS steps of the same global batch; returns losses and adapter weights."""
    from ftlib import add_lora, format_dataset, load_model, save, train
    from ftlib.demo import load_headlines

    torch.set_num_threads(1)
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    model = add_lora(model, use_gradient_checkpointing=True)
    dataset = format_dataset(load_headlines("train")[:64], tokenizer)
    history = train(model, tokenizer, dataset, per_device_train_batch_size=GLOBAL_BATCH // processes,
                    gradient_accumulation_steps=2, max_steps=STEPS, learning_rate=1e-3, warmup_steps=0)
    if save_to is not None:
        save(model, tokenizer, save_to, verbose=False)
    adapters = {name: parameter.detach().clone() for name, parameter in model.named_parameters()
                if parameter.requires_grad}
    return {"loss": history.loss, "adapters": adapters, "world": distributed.process_count()}


@pytest.mark.slow
def test_two_gloo_processes_train_as_one_process_with_the_same_global_batch(tmp_path):
    single = _fine_tune(processes=1)
    started = time.perf_counter()
    double = distributed.launch(_fine_tune, 2, str(tmp_path / "adapter"), num_processes=2, timeout=60,
                                port=29511)
    print(f"2 processes: {time.perf_counter() - started:.1f} s")
    assert double["world"] == 2  # rank 0's result came back, from a run of two processes
    assert single["loss"][-1] < single["loss"][0]  # it trained
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert double["adapters"].keys() == single["adapters"].keys()
    for name, weight in single["adapters"].items():
        torch.testing.assert_close(double["adapters"][name], weight, rtol=1e-4, atol=1e-5)
    saved = sorted(path.name for path in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in saved  # one adapter, written once (rank 0), complete when launch returned
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no leftover half-written folder


def _fail_on_rank_one():
    if distributed.process_rank() == 1:
        raise RuntimeError("the data file of process 1 is missing")
    distributed.wait_for_everyone()  # without the launcher's watch and the timeout, rank 0 would wait here for ever


def test_a_failing_process_stops_the_run_with_an_error_naming_it():
    started = time.perf_counter()
    with pytest.raises(FtlibError, match=r"process 1 of 2 failed first \(RuntimeError: the data file of process 1"):
        distributed.launch(_fail_on_rank_one, num_processes=2, timeout=8, port=29512)
    # Rank 0 waits at the barrier until the launcher stops it or the collective times out, not for ever
    assert time.perf_counter() - started < 8 + 15


def _hang_on_rank_one():
    if distributed.process_rank() == 1:
        time.sleep(60)  # a process stuck before the collective: rank 0 must not wait for it for ever
    distributed.wait_for_everyone()


def test_a_hanging_process_stops_the_run_at_the_collective_timeout():
    started = time.perf_counter()
    rank_zero_stopped = r"process 0 of 2 failed first \(FtlibError: process 0 of 2 stopped: a collective"
    with pytest.raises(FtlibError, match=rank_zero_stopped):
        distributed.launch(_hang_on_rank_one, num_processes=2, timeout=5, port=29513)
    assert time.perf_counter() - started < 60


def test_ddp_settings_turn_off_the_unused_parameter_search_only_for_several_processes(monkeypatch, tiny_model):
    model, _ = tiny_model
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.trainer_settings(model) == {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("FTLIB_COLLECTIVE_TIMEOUT", "30")
    settings = distributed.trainer_settings(model)
    assert settings["ddp_find_unused_parameters"] is False
    assert settings["ddp_timeout"] == 30
    assert settings["use_cpu"] is True  # accelerate runs several CPU processes (gloo) only when asked


def test_fsdp_settings_wrap_each_decoder_layer_with_fsdp2(monkeypatch, tiny_model, capsys):
    model, _ = tiny_model
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = distributed.fsdp_settings(model, True)  # what a GPU run hands the trainer
    assert settings["fsdp"] == "full_shard auto_wrap"
    assert settings["fsdp_config"]["fsdp_version"] == 2
    assert settings["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert distributed.fsdp_settings(model, "shard_grad_op")["fsdp_config"]["reshard_after_forward"] is False
    assert distributed.fsdp_settings(model, None) == {}
    # accelerate shards only on GPUs: on the CPU the run is DDP, and says so instead of ignoring fsdp silently
    assert "fsdp" not in distributed.trainer_settings(model, fsdp=True)
    assert "shards the model on GPUs only" in capsys.readouterr().out


def test_bad_distributed_settings_name_the_fix(monkeypatch, tiny_model):
    model, tokenizer = tiny_model
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from ftlib import add_lora, train

    model = add_lora(model)
    before = {name: weight.clone() for name, weight in model.named_parameters()}
    with pytest.raises(FtlibError, match="torchrun --nproc_per_node 2"):
        train(model, tokenizer, [{"question": "q", "answer": "a"}], fsdp=True)
    with pytest.raises(FtlibError, match="fsdp must be one of"):
        distributed.check_fsdp("everything")
    assert all(torch.equal(weight, before[name]) for name, weight in model.named_parameters())
    monkeypatch.setenv("FTLIB_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(FtlibError, match="FTLIB_COLLECTIVE_TIMEOUT"):
        distributed.collective_timeout()
    with pytest.raises(FtlibError, match="num_processes must be"):
        distributed.launch(print, num_processes=0)
    with pytest.raises(FtlibError, match="launch needs a function"):
        distributed.launch("train.py", num_processes=2)


def test_only_rank_zero_keeps_the_progress_callbacks(monkeypatch):
    class Plot:
        shows_progress = True

    class Counter:
        pass

    plot, counter = Plot(), Counter()
    monkeypatch.setenv("RANK", "1")
    assert distributed.progress_callbacks_here([plot, counter]) == [counter]
    monkeypatch.setenv("RANK", "0")
    assert distributed.progress_callbacks_here([plot, counter]) == [plot, counter]


def test_each_process_loads_onto_its_own_gpu_only_when_there_are_gpus(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.rank_device_map() == {"": 1}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FtlibError, match="start at most 1 process"):
        distributed.rank_device_map()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.rank_device_map() is None  # the CPU stays the CPU


def test_memory_per_gpu_follows_the_sharding():
    from ftlib import estimate_memory

    one = estimate_memory("llama-3.1-8b", "full", optim="adamw_torch")
    ddp = estimate_memory("llama-3.1-8b", "full", optim="adamw_torch", num_gpus=2)
    sharded = estimate_memory("llama-3.1-8b", "full", optim="adamw_torch", num_gpus=2, fsdp=True)
    sharded_four = estimate_memory("llama-3.1-8b", "full", optim="adamw_torch", num_gpus=4, fsdp=True)
    grad_op = estimate_memory("llama-3.1-8b", "full", optim="adamw_torch", num_gpus=2, fsdp="shard_grad_op")
    # DDP: a whole copy on each GPU, and a second copy of the gradients in its buckets
    assert (ddp.weights, ddp.optimizer, ddp.activations) == (one.weights, one.optimizer, one.activations)
    assert ddp.gradients == 2 * one.gradients
    # FSDP: half of the weights, gradients and optimizer state, plus two whole layers gathered at a time
    hidden, layers, vocabulary = 4096, 32, 128256  # Llama-3.1-8B's published shape
    layer = (one.details["parameters"] - 2 * vocabulary * hidden - (2 * layers + 1) * hidden) / layers * 2  # bytes
    assert sharded.weights == pytest.approx(one.weights / 2 + 2 * layer)
    assert sharded_four.weights == pytest.approx(one.weights / 4 + 2 * layer)
    assert sharded.optimizer == one.optimizer / 2 and sharded.gradients == one.gradients / 2
    assert sharded.activations == one.activations  # each GPU still computes its own rows
    assert sharded_four.total < sharded.total < one.total < ddp.total
    # shard_grad_op keeps every layer's whole weights between the passes: more memory than full_shard
    assert grad_op.weights > one.weights and grad_op.optimizer == sharded.optimizer
    assert sharded.details["num_gpus"] == 2 and sharded.details["fsdp"] is True


def test_memory_estimate_refuses_sharding_one_gpu():
    from ftlib import estimate_memory

    with pytest.raises(FtlibError, match="num_gpus=2"):
        estimate_memory("llama-3.1-8b", "qlora", fsdp=True)
    with pytest.raises(FtlibError, match="num_gpus must be"):
        estimate_memory("llama-3.1-8b", "qlora", num_gpus=0)
    with pytest.raises(FtlibError, match="fsdp must be"):
        estimate_memory("llama-3.1-8b", "qlora", num_gpus=2, fsdp="zero3")


def _save_sharded_adapter(folder):
    """Shard ftlib-tiny with its adapters over the processes (FSDP2, gloo) and save; returns the unsharded weights."""
    from torch.distributed.fsdp import fully_shard

    from ftlib import add_lora, load_model, save

    torch.manual_seed(0)  # the same adapters in every process, as after a run
    model, tokenizer = load_model("ftlib-tiny", load_in_4bit=False, max_seq_length=128)
    model = add_lora(model, use_gradient_checkpointing=False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:  # lora_B starts at zero: give every adapter weight a value to compare
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(len(name))))
    whole = {name: parameter.detach().clone() for name, parameter in model.named_parameters()
             if parameter.requires_grad}
    distributed.wait_for_everyone()  # joins the processes (gloo)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    assert distributed.is_sharded(model)
    save(model, tokenizer, folder, verbose=False)
    return whole


@pytest.mark.slow
def test_a_model_sharded_by_fsdp2_saves_one_whole_adapter(tmp_path):
    from safetensors.torch import load_file

    whole = distributed.launch(_save_sharded_adapter, str(tmp_path / "adapter"), num_processes=2, timeout=60,
                               port=29514)
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(saved) == len(whole) > 0
    for name, weight in whole.items():
        key = name.replace(".default.weight", ".weight")
        torch.testing.assert_close(saved[key], weight)  # whole, not one process's half


def _rank_and_world():
    return distributed.process_rank(), distributed.process_count()


@pytest.mark.slow
def test_fresh_processes_run_an_importable_function_and_refuse_one_defined_in_a_cell(tmp_path):
    # what launch does once the notebook has used the GPU: spawned processes, which import the function by name
    distributed._spawn(distributed._RankBody(_rank_and_world, str(tmp_path), True), (), 2, 29515)
    assert torch.load(tmp_path / "result.pt") == (0, 2)
    with pytest.raises(FtlibError, match="put the function in a .py file"):
        distributed._spawn(distributed._RankBody(lambda: None, str(tmp_path), True), (), 2, 29516)
