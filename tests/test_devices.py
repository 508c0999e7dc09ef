"""Device and dtype of the torch stages (``model.device``, ``model.dtype``), block-by-block calibration on
a device other than the model's storage, and what a stage costs (peak memory, disk)."""

import copy
import json

import pytest
import torch

from nncf_elastic_lora.blockwise import BlockRunner, capture_layer_inputs, streamed_logits
from nncf_elastic_lora.cli import main
from nncf_elastic_lora.devices import DeviceError, ResourceMeter, available_devices, placement, resolve_device
from nncf_elastic_lora.elastic.channels import input_sq_sums
from nncf_elastic_lora.models import build_tiny_llama
from nncf_elastic_lora.sparsity import sparsify_model
from nncf_elastic_lora.training import training_arguments

from .conftest import TINY
from .helpers import calibration_ids, training_config

NO_CUDA = not torch.cuda.is_available()
# torch.device("cpu", 0) is CPU memory too, but not equal to torch.device("cpu"): giving it as the
# execution device takes the code path that streams blocks to an accelerator, on a machine without one.
OTHER_CPU = torch.device("cpu", 0)


def test_auto_is_the_cpu_in_float32_without_an_accelerator():
    if len(available_devices()) > 1:
        pytest.skip("this machine has an accelerator")
    where = placement("auto", "auto")
    assert where.device == torch.device("cpu") and where.dtype is torch.float32
    assert placement("cpu", "bfloat16").dtype is torch.bfloat16


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "xpu:3"])
def test_a_device_that_is_not_here_names_what_is(spec):
    with pytest.raises(DeviceError, match=r"is not available here.*available: cpu"):
        resolve_device(spec)


def test_a_malformed_device_names_the_allowed_forms():
    with pytest.raises(DeviceError, match=r"'gpu' is not a device; allowed: 'auto', 'cpu', 'cuda'"):
        resolve_device("gpu")
    with pytest.raises(DeviceError, match=r"model.dtype: 'int8' is not a dtype"):
        placement("cpu", "int8")


@pytest.mark.skipif(not NO_CUDA, reason="CUDA is available here")
@pytest.mark.parametrize(
    "override, message",
    [
        ("model.device=cuda", "model.device: 'cuda' is not available here"),
        ("model.device=gpu", "'gpu' is not a torch device; allowed"),
        ("model.dtype=int8", "model.dtype"),
    ],
)
def test_cli_refuses_a_device_before_writing_anything(tmp_path, capsys, override, message):
    out = tmp_path / "sparse"
    code = main(["sparsify", "--model", "tiny-random-llama", "--output", str(out), "--set", override, "--no-progress"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _wanda(model, device=None):
    ids = calibration_ids()
    return sparsify_model(
        model, method="wanda", ratio=0.5, target_modules=["{re}.*_proj"], calibration=ids, progress=False, device=device
    )


def _no_hooks(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_wanda_streamed_block_by_block_equals_wanda_in_place():
    here, streamed = build_tiny_llama(TINY).eval(), build_tiny_llama(TINY).eval()
    _wanda(here)
    _wanda(streamed, device=OTHER_CPU)
    for (name, a), b in zip(here.state_dict().items(), streamed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert _no_hooks(streamed)
    assert next(streamed.parameters()).device == torch.device("cpu")


def test_block_runner_gives_the_whole_models_block_inputs_and_sums():
    model = build_tiny_llama(TINY).eval()
    ids = calibration_ids()
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(TINY.tiny.num_hidden_layers)]
    direct = [torch.zeros(TINY.tiny.intermediate_size, dtype=torch.float64) for _ in names]
    def accumulate(k, x):  # a pre-hook's return value would replace the input
        direct[k].add_((x.double() ** 2).reshape(-1, x.shape[-1]).sum(0))

    handles = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, a, k=k: accumulate(k, a[0]))
        for k, n in enumerate(names)
    ]
    with torch.no_grad():
        for x in ids:
            model(input_ids=x)
    for h in handles:
        h.remove()
    for got in (input_sq_sums(model, names, ids), input_sq_sums(model, names, ids, device=OTHER_CPU)):
        for a, b in zip(got, direct, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    captured = capture_layer_inputs(model, ids[:1], device=OTHER_CPU)
    assert len(captured[0].blocks) == TINY.tiny.num_hidden_layers and _no_hooks(model)
    with torch.no_grad():
        torch.testing.assert_close(streamed_logits(model, ids[0], OTHER_CPU), model(input_ids=ids[0]).logits)


def test_block_runner_refuses_modules_outside_the_blocks_before_any_forward():
    model = build_tiny_llama(TINY).eval()
    calls = []
    model.model.layers[0].register_forward_pre_hook(lambda m, a: calls.append(1) and None)
    with pytest.raises(ValueError, match=r"ordering sees decoder-block modules only; these are outside: \['lm_head'\]"):
        BlockRunner(model, calibration_ids()[:1], modules=["lm_head", "model.layers.0.mlp.down_proj"], what="ordering")
    assert calls == []


def test_an_explicit_device_index_is_refused_under_a_launcher(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DeviceError, match=r"'cuda:1' names one device, but this process is one of several"):
        resolve_device("cuda:1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "-1")  # "not distributed", as some tools say it
    assert resolve_device("cpu") == torch.device("cpu")


def test_training_arguments_train_where_the_model_is():
    args = training_arguments(training_config(), "/tmp/unused", progress=False, device=torch.device("cpu"))
    assert args.device == torch.device("cpu") and args.n_gpu == 0 and args.use_cpu


def test_resource_meter_resets_the_peak_at_its_start():
    import mmap

    with ResourceMeter() as big:
        block = mmap.mmap(-1, 64 * 2**20)  # 64 MiB touched, and surely unmapped after: no allocator keeps it
        block.write(b"\1" * len(block))
    block.close()
    with ResourceMeter() as small:
        pass
    record = big.record()
    assert record["peak_accelerator_mib"] is None and record["wall_s"] >= 0
    if record["peak_rss_since"] == "stage start":
        assert small.peak_rss < big.peak_rss - 32 * 2**20


def test_run_on_cpu_and_auto_are_identical_and_report_resources(tmp_path):
    """`sparsify` with model.device=cpu and =auto writes the same weights on this machine."""
    from safetensors.torch import load_file

    outs = []
    for spec in ("cpu", "auto"):
        out = tmp_path / spec
        assert main(["sparsify", "--model", "tiny-random-llama", "--output", str(out), "--set",
                     f"model.device={spec}", "--set", "sparsity.calibration.num_samples=4", "--no-progress"]) == 0
        outs.append(load_file(out / "model.safetensors"))
    if len(available_devices()) == 1:
        assert outs[0].keys() == outs[1].keys()
        assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    report = json.loads((tmp_path / "cpu" / "report.json").read_text())
    assert report["sparsity"] == pytest.approx(0.5, abs=0.02)


def test_a_tied_head_stays_tied_after_streaming():
    model = build_tiny_llama(TINY).eval()
    reference = copy.deepcopy(model)
    capture_layer_inputs(model, calibration_ids()[:1], device=OTHER_CPU)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_wanda_on_cuda_with_the_model_in_cpu_memory_matches_the_cpu():
    here, streamed = build_tiny_llama(TINY).eval(), build_tiny_llama(TINY).eval()
    _wanda(here)
    _wanda(streamed, device="cuda")
    assert next(streamed.parameters()).device.type == "cpu"
    agree = [float(((a == 0) == (b == 0)).float().mean()) for a, b in zip(here.parameters(), streamed.parameters(), strict=True)]
    assert min(agree) > 0.99  # float rounding on the GPU may swap a few ties at the threshold


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="needs CUDA")
def test_tiny_run_on_cuda_matches_the_cpu(tmp_path):
    """The tiny Shears run without export (no OpenVINO on the GPU machine) on CUDA and on the CPU, in
    float32: the same sparsity, and accuracies within a few examples (GPU float rounding)."""
    from .helpers import EXAMPLES

    data = tmp_path / "arith.json"
    data.write_text(json.dumps([{"instruction": e.prompt, "output": e.target} for e in EXAMPLES * 3]))
    reports = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / device
        assert main(["run", "configs/tiny_shears.json", "--output", str(out), "--set", f"model.device={device}",
                     "--set", "model.dtype=float32", "--set", "data.task=json", "--set", f"data.path={data}",
                     "--set", "evaluation.tasks=null", "--set", "export.enabled=false",
                     "--set", "benchmark.enabled=false", "--no-progress"]) == 0
        reports[device] = json.loads((out / "report.json").read_text())
    gpu, cpu = reports["cuda"], reports["cpu"]
    assert any(r.get("peak_accelerator_mib") for r in gpu["stage_resources"].values())
    assert gpu["sparsity"]["sparsity"] == pytest.approx(cpu["sparsity"]["sparsity"], abs=1e-3)
    assert gpu["training"]["train_loss"] == pytest.approx(cpu["training"]["train_loss"], rel=0.02)


def test_checkpoints_are_sharded_and_in_the_models_dtype(tmp_path, monkeypatch, tokenizer):
    """A bfloat16 model is written in bfloat16, in shards of MAX_SHARD_SIZE, and loads back equal."""
    from nncf_elastic_lora import outputs
    from nncf_elastic_lora.models import load_model

    monkeypatch.setattr(outputs, "MAX_SHARD_SIZE", "2MB")
    model = build_tiny_llama(TINY).to(torch.bfloat16)
    outputs.save_checkpoint(tmp_path / "ckpt", model, tokenizer, verb="test")
    shards = sorted(p.name for p in (tmp_path / "ckpt").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    config = TINY.model_copy(update={"name_or_path": str(tmp_path / "ckpt"), "dtype": "bfloat16"})
    loaded, _ = load_model(config)
    assert next(loaded.parameters()).dtype is torch.bfloat16
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_sharded_checkpoint_missing_a_shard_is_one_clear_error(tmp_path, monkeypatch, tokenizer, capsys):
    from nncf_elastic_lora import outputs

    monkeypatch.setattr(outputs, "MAX_SHARD_SIZE", "2MB")
    outputs.save_checkpoint(tmp_path / "ckpt", build_tiny_llama(TINY), tokenizer, verb="test")
    sorted((tmp_path / "ckpt").glob("model-*.safetensors"))[-1].unlink()
    capsys.readouterr()  # the save's own progress bar
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: could not load the model in") and "model-00002-of-" in err and "re-create" in err
    assert len(err.splitlines()) == 1 and not out.exists()
