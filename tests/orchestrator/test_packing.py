"""Fractional-GPU packing: the memory guard (in the spec and at start) and the CPU fallback."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from orchestrator.launch import main
from orchestrator.spec import ResourcesSpec, SpecError, TuneStage, load_study, packing_problem, trials_per_gpu
from orchestrator.stages.base import StageError
from orchestrator.stages.tune import trial_resources_here
from tests.orchestrator.study_helpers import REPO, client_for, launcher, launcher_env, study_runs, tiny_study
from tests.orchestrator.test_spec import rejected_lines, valid_study

# ---------------------------------------------------------------- the arithmetic


@pytest.mark.parametrize("gpu,trial_gb,device_gb,refused", [
    (0.25, 12, 40, True),    # 4 x 12 = 48 > 40
    (0.25, 12, 80, False),   # 48 <= 80
    (0.5, 20, 40, False),    # 2 x 20 = 40: exactly fits
    (1, 50, 40, True),       # a whole GPU is still too small
    (2, 30, 40, False),      # whole GPUs: one trial per GPU
    (1 / 3, 13, 40, False),  # 3 x 13 = 39
    (0.25, None, 40, False),  # no trial memory declared: nothing to judge
    (0.25, 12, None, False),  # no device memory known: nothing to judge
    (0, 50, 40, False),      # a CPU trial uses no GPU memory
])
def test_packing_problem(gpu, trial_gb, device_gb, refused):
    assert (packing_problem(gpu, trial_gb, device_gb) is not None) == refused


def test_a_refused_packing_says_how_many_trials_need_what_and_what_would_fit():
    assert packing_problem(0.25, 12, 40) == (
        "4 trials per GPU (gpu: 0.25) x 12 GB = 48 GB do not fit a 40 GB GPU (device_memory_gb); "
        "use gpu: 0.3333 (3 per GPU) or lower gpu_memory_gb to 10")
    assert packing_problem(1, 50, 40, device="the smallest GPU here: cuda:0 X") == (
        "each trial needs 50 GB of GPU memory (gpu_memory_gb) but a GPU has 40 GB (the smallest GPU here: "
        "cuda:0 X): it does not fit even alone on a whole GPU")


@pytest.mark.parametrize("gpu,packed", [(0.1, 10), (1 / 3, 3), (0.3, 3), (0.25, 4), (0.5, 2), (0.6, 1), (1, 1),
                                        (2, 1), (0.1666, 6)])
def test_trials_per_gpu_survives_float_rounding(gpu, packed):
    assert trials_per_gpu(gpu) == packed


def test_the_suggested_fraction_packs_exactly_the_trials_that_fit():
    # 7 GB trials on a 45 GB GPU: 6 fit; 1/6 printed to 6 digits (0.166667) would pack only 5.
    message = packing_problem(0.125, 7, 45)
    assert "use gpu: 0.1666 (6 per GPU)" in message
    assert packing_problem(0.1666, 7, 45) is None and trials_per_gpu(0.1666) == 6


# ---------------------------------------------------------------- the spec


def write_study(tmp_path, resources: dict, name: str = "study.yaml"):
    study = valid_study()
    study["stages"][0]["resources"] = resources
    path = tmp_path / name
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_packing_keys_become_typed_resources(tmp_path, capsys):
    path = write_study(tmp_path, {"cpu": 2, "gpu": 0.25, "gpu_memory_gb": 8, "device_memory_gb": 40,
                                  "fallback": "cpu"})
    stage = load_study(path).stages[0]
    assert isinstance(stage, TuneStage)
    assert stage.resources == ResourcesSpec(cpu=2.0, gpu=0.25, gpu_memory_gb=8.0, device_memory_gb=40.0,
                                            fallback="cpu")
    assert main([str(path), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    assert ("resources per trial: 2 CPU, 0.25 GPU (4 trials per GPU), 8 GB GPU memory each, 40 GB GPUs; "
            "fallback: cpu (where there is no GPU); max_failures=1") in capsys.readouterr().out


@pytest.mark.parametrize("fallback", [None, "none"])
def test_no_fallback_is_the_default(tmp_path, fallback):
    path = write_study(tmp_path, {"gpu": 0.5, "fallback": fallback})
    assert load_study(path).stages[0].resources == ResourcesSpec(gpu=0.5)


def test_a_packing_that_cannot_fit_is_exit_2_naming_the_file_and_the_stage_resources(tmp_path, capsys):
    path = write_study(tmp_path, {"gpu": 0.25, "gpu_memory_gb": 12, "device_memory_gb": 40})
    lines, err = rejected_lines(path, capsys)
    assert lines == [f"{path}: stages[0].resources: 4 trials per GPU (gpu: 0.25) x 12 GB = 48 GB do not fit a "
                     f"40 GB GPU (device_memory_gb); use gpu: 0.3333 (3 per GPU) or lower gpu_memory_gb to 10"], err


def test_a_trial_larger_than_a_whole_gpu_is_refused(tmp_path, capsys):
    path = write_study(tmp_path, {"gpu": 1, "gpu_memory_gb": 50, "device_memory_gb": 40})
    lines, err = rejected_lines(path, capsys)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: stages[0].resources: each trial needs 50 GB"), err


def test_the_same_packing_fits_a_larger_gpu_and_is_unchecked_without_device_memory(tmp_path):
    for resources in ({"gpu": 0.25, "gpu_memory_gb": 12, "device_memory_gb": 80},
                      {"gpu": 0.25, "gpu_memory_gb": 12}):
        assert load_study(write_study(tmp_path, resources)).stages[0].resources.gpu == 0.25


@pytest.mark.parametrize("resources,key,fragment", [
    ({"gpu": 0.5, "gpu_memory_gb": -1}, "stages[0].resources.gpu_memory_gb", "must be > 0 (GB), got -1"),
    ({"gpu": 0.5, "device_memory_gb": 0}, "stages[0].resources.device_memory_gb", "must be > 0 (GB), got 0"),
    ({"gpu": 0.5, "gpu_memory_gb": "12GB"}, "stages[0].resources.gpu_memory_gb", "expected a number"),
    ({"gpu": 0.5, "fallback": "gpu"}, "stages[0].resources.fallback", "must be one of cpu, none, got 'gpu'"),
    ({"gpu": 0.5, "fallback": True}, "stages[0].resources.fallback", "expected a string"),
    ({"gpu": 0.5, "gpu_mem_gb": 8}, "stages[0].resources.gpu_mem_gb", "did you mean 'gpu_memory_gb'"),
], ids=["negative-trial-memory", "zero-device-memory", "memory-with-unit", "fallback-gpu", "fallback-bool",
        "key-typo"])
def test_bad_packing_values_are_one_line_naming_the_key(tmp_path, capsys, resources, key, fragment):
    lines, err = rejected_lines(write_study(tmp_path, resources), capsys)
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'study.yaml'}: {key}: ") and fragment in lines[0], err


def test_parse_errors_are_not_followed_by_a_packing_error(tmp_path):
    path = write_study(tmp_path, {"gpu": 0.25, "gpu_memory_gb": 12, "device_memory_gb": 40, "cpu": -1})
    with pytest.raises(SpecError) as error:
        load_study(path)
    assert [key for key, _ in error.value.problems] == ["stages[0].resources.cpu"]


# ---------------------------------------------------------------- at start (no Ray needed: its answer is faked)


def tune_stage(**resources) -> TuneStage:
    return TuneStage(name="gasten", trainable="classifier", metric="val_accuracy", mode="max",
                     resources=ResourcesSpec(**resources))


@pytest.fixture
def machine(monkeypatch):
    """Pretend the local Ray has `resources` and the smallest GPU torch sees is `smallest`."""
    import ray

    import orchestrator.stages.tune as tune_kind

    def set_machine(resources: dict, smallest: tuple[float, str] | None = None) -> None:
        monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
        monkeypatch.setattr(tune_kind, "smallest_gpu", lambda: smallest)
    return set_machine


def test_without_a_gpu_the_fallback_runs_the_trials_on_cpu(machine, capsys):
    machine({"CPU": 2.0})
    stage = tune_stage(cpu=1, gpu=0.5, gpu_memory_gb=12, fallback="cpu")
    assert (trial_resources_here(stage, address=None)
            == ResourcesSpec(cpu=1, gpu=0.0, gpu_memory_gb=12, fallback="cpu"))
    assert stage.resources.gpu == 0.5  # the spec itself is untouched
    assert capsys.readouterr().out == ("[gasten] no GPU on this machine: running its trials on CPU "
                                       "(resources.fallback: cpu)\n")


def test_without_a_gpu_and_without_fallback_the_error_names_the_way_out(machine):
    machine({"CPU": 2.0})
    with pytest.raises(StageError) as error:
        trial_resources_here(tune_stage(gpu=0.5), address=None)
    assert error.value.reason.startswith("resources.gpu: each trial asks for 0.5 GPU but this machine's Ray has no "
                                         "GPU; add `fallback: cpu`")


def test_at_start_the_packing_is_judged_against_the_smallest_gpu_here(machine):
    machine({"CPU": 16.0, "GPU": 2.0}, (39.4, "cuda:1 NVIDIA A100-SXM4-40GB"))
    with pytest.raises(StageError) as error:
        trial_resources_here(tune_stage(gpu=0.5, gpu_memory_gb=20), address=None)
    assert error.value.reason == ("resources: 2 trials per GPU (gpu: 0.5) x 20 GB = 40 GB do not fit a 39.4 GB GPU "
                                  "(the smallest GPU here: cuda:1 NVIDIA A100-SXM4-40GB); use gpu: 1 (1 per GPU) or "
                                  "lower gpu_memory_gb to 19.7")
    fits = tune_stage(gpu=0.5, gpu_memory_gb=19)
    assert trial_resources_here(fits, address=None) == fits.resources


def test_a_gpu_machine_ignores_the_fallback_and_a_cluster_is_not_judged(machine):
    machine({"CPU": 4.0, "GPU": 1.0}, (80.0, "cuda:0 H100"))
    stage = tune_stage(gpu=0.25, gpu_memory_gb=12, fallback="cpu")
    assert trial_resources_here(stage, address=None) == stage.resources
    machine({"CPU": 1.0})  # a cluster may autoscale: nothing is refused, nothing falls back
    assert trial_resources_here(stage, address="auto") == stage.resources


# ---------------------------------------------------------------- through the launcher, on a machine without GPU


def run_without_gpu(tmp_path, resources: dict) -> subprocess.CompletedProcess:
    spec = tiny_study(tmp_path / "tiny.yaml", num_samples=1, epochs=1, train_size=200)
    study = yaml.safe_load(spec.read_text())
    study["stages"][0]["resources"] = resources
    spec.write_text(yaml.safe_dump(study, sort_keys=False))
    env = {**launcher_env(), "CUDA_VISIBLE_DEVICES": ""}  # Ray and torch then see no GPU, even on a GPU machine
    return subprocess.run(launcher(str(spec), "--output", str(tmp_path / "out")), cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.mark.slow
def test_cpu_fallback_runs_the_study_on_a_machine_without_gpu(tmp_path):
    started = time.monotonic()
    result = run_without_gpu(tmp_path, {"cpu": 1, "gpu": 0.5, "gpu_memory_gb": 4, "fallback": "cpu"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ("[classifier] no GPU on this machine: running its trials on CPU (resources.fallback: cpu)"
            in result.stdout.splitlines())
    _, parents, _ = study_runs(client_for(tmp_path / "out"), "tiny")
    run = parents["classifier"]
    assert run.data.params["resources.gpu"] == "0.5" and run.data.params["resources.fallback"] == "cpu"
    assert run.data.tags["gensearch.fallback"].startswith("cpu")
    print(f"fallback study: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_a_gpu_stage_without_fallback_fails_with_one_line_naming_resources_gpu(tmp_path):
    """Through the launcher and a real Ray (slow: Ray starts). The message itself is checked without Ray above."""
    result = run_without_gpu(tmp_path, {"cpu": 1, "gpu": 0.5})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "stage 'classifier' failed: resources.gpu: each trial asks for 0.5 GPU" in errors[0]
    assert "fallback: cpu" in errors[0]


def test_smallest_gpu_reads_torch_and_rounds_down(monkeypatch):
    import types

    import torch

    from orchestrator.stages.tune import smallest_gpu

    sizes = {0: ("big", 80 * 2**30 + 1), 1: ("small", 42_298_834_944)}  # 39.39 GiB
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(name=sizes[i][0], total_memory=sizes[i][1]))
    assert smallest_gpu() == (39.3, "cuda:1 small")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert smallest_gpu() is None
