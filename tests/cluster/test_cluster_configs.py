"""Ray cluster-launcher configs (cluster/*.yaml): accepted by the installed Ray, and true to cluster/README.md.

Ray's own checks are the ones `ray up` runs before it calls a cloud (`_bootstrap_config` in
ray/autoscaler/_private/commands.py): `prepare_config` merges the provider's defaults and
`validate_config` checks the result against ray/autoscaler/ray-schema.json and the node types.
The other tests hold the configs to what the README promises: MLflow on the head's private address,
GPU workers that autoscale from zero, the project installed on every node, shared storage for
`--output`, nothing but SSH open to the internet, and launch commands the real CLI accepts.
Offline and fast: nothing is launched and no cloud API is called.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import click
import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.launch import build_parser

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
CONFIGS = sorted(CLUSTER.glob("*.yaml"))
GPU, LOCAL, README = CLUSTER / "gpu.yaml", CLUSTER / "local.yaml", CLUSTER / "README.md"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
SHARED = "/mnt/gensearch"  # the shared mount every node has; --output must live under it
WORLD = {"0.0.0.0/0", "::/0"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_up_checks(config: dict) -> dict:
    """The cloud-free part of `ray up`: Ray's defaults merged in, then Ray's validation."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def by_name(paths):
    return pytest.mark.parametrize("path", paths, ids=[p.name for p in paths])


def test_cluster_folder_holds_the_gpu_and_local_configs():
    assert GPU in CONFIGS and LOCAL in CONFIGS
    text = README.read_text()
    assert "ray up cluster/gpu.yaml" in text and "ray down cluster/gpu.yaml" in text
    assert "ray up cluster/local.yaml" in text


# --- Ray's own validation --------------------------------------------------------------------

@by_name(CONFIGS)
def test_config_passes_rays_own_schema_and_validation(path):
    config = load(path)
    jsonschema.validate(config, json.loads(RAY_SCHEMA.read_text()))  # as written, before defaults
    prepared = ray_up_checks(config)
    assert prepared["cluster_name"] == config["cluster_name"]
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _rename_top_level(config):
    config["setup_comands"] = config.pop("setup_commands")


def _max_workers_as_text(config):
    config["max_workers"] = "two"


def _idle_timeout_as_text(config):
    config["idle_timeout_minutes"] = "ten"


def _misspelled_node_type_key(config):
    node_type = config["available_node_types"]["ray.worker.gpu"]
    node_type["max_worker"] = node_type.pop("max_workers")


def _fractional_gpu_resource(config):
    config["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = 0.5


def _head_type_not_defined(config):
    config["head_node_type"] = "ray.head.missing"


def _node_types_on_local_provider(config):
    config["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    config["head_node_type"] = "gpu"


BROKEN = [
    (GPU, _rename_top_level, jsonschema.ValidationError),
    (LOCAL, _rename_top_level, jsonschema.ValidationError),
    (GPU, _max_workers_as_text, jsonschema.ValidationError),
    (GPU, _idle_timeout_as_text, jsonschema.ValidationError),
    (LOCAL, _idle_timeout_as_text, jsonschema.ValidationError),
    (GPU, _misspelled_node_type_key, jsonschema.ValidationError),
    (GPU, _fractional_gpu_resource, jsonschema.ValidationError),  # node resources are integers
    (GPU, _head_type_not_defined, ValueError),
    (LOCAL, _node_types_on_local_provider, click.ClickException),  # Ray's local provider refuses them
]


@pytest.mark.parametrize("path,breakage,error", BROKEN,
                         ids=[f"{p.stem}-{b.__name__.strip('_')}" for p, b, _ in BROKEN])
def test_rays_validation_rejects_a_broken_copy(path, breakage, error):
    config = load(path)
    ray_up_checks(config)  # the file itself passes...
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises(error):  # ...and the same validation catches the mistake
        ray_up_checks(broken)


# --- The scripts both files run ----------------------------------------------------------------

SECTIONS = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands")
# `[NAME=VALUE ...] ~/gensearch/cluster/SCRIPT.sh [ARG ...]`: ray up copies the repository to ~/gensearch.
SCRIPT_CALL = re.compile(r"(?P<env>(?:\w+=\S+\s+)*)~/gensearch/(?P<script>cluster/[\w-]+\.sh)(?P<args>(?:\s.*)?)")
# What may differ between gpu.yaml and local.yaml: the storage (the NFS/EFS source and its mount options,
# where MLflow's artifacts go) and the provider (autoscaler v1 for Ray's local provider).
STORAGE_ENV = {"MLFLOW_ARTIFACTS_DESTINATION"}
PROVIDER_ENV = {"RAY_enable_autoscaler_v2"}


def script_calls(config: dict) -> dict[str, list[tuple[dict[str, str], str, list[str]]]]:
    """Each setup and start section as (environment, script, arguments) calls; every command must be one."""
    calls = {}
    for section in SECTIONS:
        calls[section] = []
        for command in config.get(section, []):
            match = SCRIPT_CALL.fullmatch(command.strip())
            assert match, f"{section}: {command!r} is not a call of a script in cluster/"
            env = dict(pair.split("=", 1) for pair in match["env"].split())
            calls[section].append((env, match["script"], shlex.split(match["args"])))
    return calls


def script_text(name: str) -> str:
    return (CLUSTER / name).read_text()


def shell_command(text: str, start: str) -> str:
    """The command that starts with `start` in a shell script, its continuation lines joined."""
    joined = text.replace("\\\n", " ")
    found = [line.strip() for line in joined.splitlines() if line.strip().startswith(start)]
    assert len(found) == 1, f"expected one command starting with {start!r}, found {len(found)}"
    return found[0]


@by_name(CONFIGS)
def test_every_setup_and_start_command_is_a_script_in_cluster(path):
    calls = script_calls(load(path))
    assert calls["setup_commands"] and calls["head_setup_commands"] and calls["head_start_ray_commands"]
    for section, section_calls in calls.items():
        for _, script, _ in section_calls:
            file = REPO / script
            assert file.is_file() and os.access(file, os.X_OK), f"{section}: {script} is not an executable file"
    for script in sorted(CLUSTER.glob("*.sh")):
        assert script.read_text().startswith("#!/usr/bin/env bash\n"), script.name
        checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, f"{script.name}: {checked.stderr}"


def check_same_scripts(gpu_config: dict, local_config: dict) -> None:
    """Both files run the same scripts with the same arguments, but for the storage and the provider."""
    def same_part(calls):
        return {section: [(script, {k: v for k, v in env.items() if k not in STORAGE_ENV | PROVIDER_ENV},
                           args[:1] if script == "cluster/setup_node.sh" else args)  # the NFS source: storage
                          for env, script, args in section_calls]
                for section, section_calls in calls.items()}

    assert same_part(script_calls(gpu_config)) == same_part(script_calls(local_config))


def test_gpu_and_local_configs_call_the_same_scripts_with_the_same_arguments():
    check_same_scripts(load(GPU), load(LOCAL))
    gpu, local = script_calls(load(GPU)), script_calls(load(LOCAL))
    (gpu_setup,), (local_setup,) = gpu["setup_commands"], local["setup_commands"]
    assert ".efs." in gpu_setup[2][1] and local_setup[2][1] == "NFS-SERVER:/export/gensearch"
    assert [env for env, _, _ in gpu["head_start_ray_commands"]] == [
        {"MLFLOW_ARTIFACTS_DESTINATION": "s3://YOUR-BUCKET/mlflow"}]
    assert [env for env, _, _ in local["head_start_ray_commands"]] == [
        {"RAY_enable_autoscaler_v2": "0", "MLFLOW_ARTIFACTS_DESTINATION": f"{SHARED}/mlflow-artifacts"}]


def _worker_starts_ray_itself(config):
    config["worker_start_ray_commands"] = ["~/gensearch/.venv/bin/ray start --address=$RAY_HEAD_IP:6379"]


def _head_fetches_other_data(config):
    config["head_setup_commands"] = ["~/gensearch/cluster/setup_head.sh /mnt/gensearch mnist kmnist"]


def _extra_setup_step(config):
    config["setup_commands"].append("~/gensearch/cluster/setup_head.sh /mnt/gensearch mnist")


@pytest.mark.parametrize("breakage", [_worker_starts_ray_itself, _head_fetches_other_data, _extra_setup_step],
                         ids=lambda b: b.__name__.strip("_"))
def test_same_scripts_check_rejects_a_local_yaml_that_drifts_from_gpu_yaml(breakage):
    local = load(LOCAL)
    breakage(local)
    with pytest.raises(AssertionError):
        check_same_scripts(load(GPU), local)


def test_scripts_install_from_package_registries_and_fetch_data_with_gensearch():
    for script in sorted(CLUSTER.glob("*.sh")):
        text = script.read_text()
        piped = re.search(r"\b(curl|wget)\b[^\n]*\|\s*(ba)?sh\b", text)
        assert not piped, f"{script.name} pipes a download into a shell"
        assert "torchvision.datasets" not in text and "download=True" not in text, script.name
    assert re.search(r'\.venv/bin/python -m orchestrator\.data fetch "\$@" --to "\$shared/data"',
                     script_text("setup_head.sh"))
    for config in (load(GPU), load(LOCAL)):
        ((_, _, args),) = script_calls(config)["head_setup_commands"]
        assert args[0] == SHARED and set(args[1:]) <= {"mnist", "fashion_mnist", "kmnist"}


# --- MLflow on the head ----------------------------------------------------------------------

def mlflow_options(command: str) -> dict[str, str | bool]:
    tokens = shlex.split(command.split("mlflow server", 1)[1])
    options: dict[str, str | bool] = {}
    for position, token in enumerate(tokens):
        if token in {">", "&", ";", "|"} or token.startswith(">"):
            break
        if token.startswith("--"):
            following = tokens[position + 1] if position + 1 < len(tokens) else ""
            value = following if following and not following.startswith(("--", ">")) else True
            options[token.split("=", 1)[0]] = token.split("=", 1)[1] if "=" in token else value
    return options


def check_mlflow_server(text: str) -> None:
    """start_mlflow.sh: MLflow on the head's private address, and stopped with the head's Ray."""
    command = shell_command(text, next(line.strip().rstrip("\\").strip()
                                       for line in text.splitlines() if "mlflow server" in line))
    assert command.startswith("setsid nohup ")  # its own process group; survives the end of Ray's SSH session
    options = mlflow_options(command)
    host = options.get("--host")
    assert isinstance(host, str) and host not in {"0.0.0.0", "::", "[::]", "127.0.0.1", "localhost"}
    # The address is the one Ray itself uses for this node: the head's private (VPC / LAN) address.
    variable = re.fullmatch(r"\$\{?(\w+)\}?", host)
    assert variable, f"--host {host!r} should be the head's address, derived in the same script"
    assert re.search(rf"^{variable.group(1)}=\$\([^\n]*ray\.util\.get_node_ip_address\(\)", text, re.M)
    port = re.fullmatch(r"\$\{?(\w+)\}?", str(options.get("--port")))
    assert port and re.search(rf"^{port.group(1)}=\$\{{MLFLOW_PORT:-5000\}}$", text, re.M)
    assert options.get("--serve-artifacts") is True
    assert options.get("--artifacts-destination") == "$MLFLOW_ARTIFACTS_DESTINATION"
    assert str(options.get("--backend-store-uri", "")).startswith(("sqlite:///", "postgresql"))
    allowed = str(options.get("--allowed-hosts", "")).split(",")
    assert "*" not in allowed and "localhost:*" in allowed  # the SSH tunnel's Host header
    # Its URI left where the launch command reads it.
    assert re.search(rf'^uri="http://\${variable.group(1)}:\${port.group(1)}"$', text, re.M)
    assert 'echo "$uri" > ~/mlflow_tracking_uri' in text
    # Stopped with the head's GCS, which the `ray stop` of `ray down` ends: the server's whole group.
    assert re.search(r'gcs_pid=\$\(pgrep -n -u "\$\(id -u\)" -x gcs_server\)', text)
    assert re.search(r'^server=\$!$', text, re.M)
    assert 'on_exit.sh" "$gcs_pid" kill -TERM -- "-$server"' in text


def test_head_runs_mlflow_on_its_private_address_port_5000_until_ray_stops():
    check_mlflow_server(script_text("start_mlflow.sh"))
    # start_head.sh: Ray's head first, then MLflow.
    head = script_text("start_head.sh")
    assert head.index('"$here/start_ray.sh" "$@"') < head.index('"$here/start_mlflow.sh"')
    for config in (load(GPU), load(LOCAL)):
        calls = script_calls(config)
        assert [script for _, script, _ in calls["head_start_ray_commands"]] == ["cluster/start_head.sh"]
        assert not any(script == "cluster/start_head.sh" for section in ("setup_commands", "head_setup_commands")
                       for _, script, _ in calls[section])
        (_, _, args), = calls["head_start_ray_commands"]
        # Ray's `ray up` reads these words from the head's start command (warn_about_bad_start_command).
        assert args[:3] == ["ray", "start", "--head"] and "--autoscaling-config=~/ray_bootstrap_config.yaml" in args


@pytest.mark.parametrize("old,new", [
    ('--host "$head_ip"', "--host 0.0.0.0"),           # every interface
    ('--host "$head_ip"', "--host 127.0.0.1"),         # workers and the driver's URI could not reach it
    ("port=${MLFLOW_PORT:-5000}", "port=${MLFLOW_PORT:-8080}"),
    ("localhost:*,127.0.0.1:*", "*"),                  # Host-header guard switched off
    ("setsid nohup ", ""),                             # dies with the SSH session
    ('kill -TERM -- "-$server"', 'kill -TERM "$server"'),  # leaves the uvicorn workers running
])
def test_mlflow_check_rejects_an_exposed_unreachable_or_immortal_server(old, new):
    text = script_text("start_mlflow.sh")
    assert old in text
    with pytest.raises(AssertionError):
        check_mlflow_server(text.replace(old, new))


# --- Workers, installation, shared storage ---------------------------------------------------

def test_gpu_workers_declare_gpus_and_autoscale_from_zero():

    prepared = ray_up_checks(load(GPU))
    head = prepared["head_node_type"]
    assert prepared["available_node_types"][head]["resources"].get("GPU", 0) == 0
    assert prepared["available_node_types"][head]["resources"].get("CPU") == 0  # no trials on the head
    workers = {name: t for name, t in prepared["available_node_types"].items() if name != head}
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, name
        assert node_type["resources"].get("CPU", 0) >= 2, name  # one paper-profile trial asks for 2 CPUs
        assert node_type.get("min_workers", 0) == 0 and node_type["max_workers"] > 0, name
        assert node_type["node_config"]["InstanceType"], name
    assert prepared["max_workers"] >= max(t["max_workers"] for t in workers.values())
    assert prepared["idle_timeout_minutes"] > 0


@by_name(CONFIGS)
def test_every_node_installs_this_repository_at_its_pinned_versions(path):
    config = load(path)
    assert config["file_mounts"] == {"~/gensearch": "."}
    assert ".gitignore" in config.get("rsync_filter", [])  # a local .venv and runs/ stay behind
    # setup_commands run on the head and on every worker; setup_node.sh installs the project.
    assert [script for _, script, _ in script_calls(config)["setup_commands"]] == ["cluster/setup_node.sh"]
    setup = script_text("setup_node.sh")
    assert re.search(r"^project=\$HOME/gensearch\b", setup, re.M)
    assert re.search(r"^venv=\$project/\.venv\b", setup, re.M)
    assert '"$venv/bin/python" -m pip install -q -e "$project[cluster]"' in setup
    assert "sys.version_info < (3, 11)" in setup and "python3.11-venv" in setup  # pyproject: requires-python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies
    ray_pin = next(d for d in dependencies if d.startswith("ray[")).split("]", 1)[1]
    assert f"ray[default]{ray_pin}" in pyproject["project"]["optional-dependencies"]["cluster"]  # job server, same Ray
    # Ray runs from that environment on every node (through its interpreter), so trials import the same
    # packages as the driver; the head's start goes through start_ray.sh too.
    starts = {script for section in ("head_start_ray_commands", "worker_start_ray_commands")
              for _, script, _ in script_calls(config)[section]}
    assert starts == {"cluster/start_head.sh", "cluster/start_ray.sh"}
    assert '"$here/start_ray.sh" "$@"' in script_text("start_head.sh")
    start_ray = script_text("start_ray.sh")
    assert 'ray_cli=("$HOME/gensearch/.venv/bin/python" -m ray.scripts.scripts)' in start_ray
    assert re.findall(r'"\$\{ray_cli\[@\]\}" (\w+)', start_ray) == ["stop", "start", "stop"]
    assert "--dashboard-host" not in start_ray + script_text("start_head.sh")  # Ray's default: localhost only
    # `ray down` runs a plain `ray stop` on the head: the environment comes first on the login PATH.
    assert "echo \"$path_line\" >> ~/.bashrc" in setup and 'gensearch/.venv/bin:$PATH' in setup


@by_name(CONFIGS)
def test_every_node_mounts_the_shared_folder_for_output_and_data(path):
    calls = script_calls(load(path))
    ((_, _, setup_args),) = calls["setup_commands"]
    assert setup_args[0] == SHARED and setup_args[1]  # the folder, and the export mounted there
    setup = script_text("setup_node.sh")
    assert re.search(r'mountpoint -q "\$shared" \|\| as_root mount -t nfs4 .*"\$nfs_source" "\$shared"', setup)
    ((_, _, head_args),) = calls["head_setup_commands"]
    assert head_args[0] == SHARED
    assert 'mkdir -p "$shared/data" "$shared/cache" "$shared/runs"' in script_text("setup_head.sh")


def test_gpu_efs_mount_is_in_the_clusters_region():
    config = load(GPU)
    region = config["provider"]["region"]
    hosts = re.findall(r"fs-[\w-]+\.efs\.([a-z0-9-]+)\.amazonaws\.com", " ".join(config["setup_commands"]))
    assert hosts and set(hosts) == {region}
    zones = config["provider"]["availability_zone"].split(",")
    assert all(zone.strip().startswith(region) for zone in zones)


# --- Network exposure ------------------------------------------------------------------------

def world_open_rules(ip_permissions: list[dict]) -> list[dict]:
    """Rules that open anything but TCP port 22 to the whole internet."""
    def ssh_only(rule):
        return rule.get("IpProtocol") == "tcp" and rule.get("FromPort") == 22 and rule.get("ToPort") == 22

    world = [r for r in ip_permissions
             if {x.get("CidrIp") for x in r.get("IpRanges", [])} & WORLD
             or {x.get("CidrIpv6") for x in r.get("Ipv6Ranges", [])} & WORLD]
    return [r for r in world if not ssh_only(r)]


def test_world_open_check_flags_anything_but_ssh():
    assert world_open_rules([{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                              "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]) == []
    mlflow = {"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    everything = {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    private = {"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    assert world_open_rules([mlflow, everything, private]) == [mlflow, everything]


def test_gpu_cluster_opens_only_ssh_to_the_internet():
    config = load(GPU)
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert world_open_rules(rules) == []
    # Naming a group on every node type stops Ray from creating its default one, whose SSH rule is
    # open to 0.0.0.0/0 (ray/autoscaler/_private/aws/config.py); one group, so its self-referencing
    # rule covers all intra-cluster traffic.
    groups = [tuple(t["node_config"].get("SecurityGroupIds", ()))
              for t in config["available_node_types"].values()]
    assert all(groups) and len(set(groups)) == 1
    # The README's commands create that group: SSH from one address, all traffic from the group.
    text = README.read_text().replace("\\\n", " ")
    ingress = [shlex.split(line.strip()) for line in text.splitlines()
               if line.strip().startswith("aws ec2 authorize-security-group-ingress")]
    assert len(ingress) == 2
    options = [dict(zip(args[3::2], args[4::2])) for args in ingress]
    assert not any(o.get("--cidr") in WORLD for o in options)
    ssh = [o for o in options if o.get("--port") == "22"]
    assert len(ssh) == 1 and ssh[0]["--cidr"].endswith("/32")
    assert [o for o in options if o.get("--source-group") == o.get("--group-id") and o.get("--protocol") == "all"]
    assert not any(o.get("--port") in {"5000", "8265"} for o in options)
    assert re.search(r"ssh [^\n]*-L 5000:\$PRIVATE:5000", text)  # MLflow's UI through a tunnel


# --- The README's launch commands ------------------------------------------------------------

def launch_commands(text: str) -> list[list[str]]:
    """The launcher's arguments in the README's `ray exec` and `ray job submit` commands (not in the outputs
    it quotes)."""
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line.startswith("ray ")]
    return [shlex.split(args) for line in lines
            for args in re.findall(r"\.venv/bin/python -m orchestrator\.launch ([^'\n]+)", line)]


def parse_launch(argv: list[str]):
    parser = build_parser()
    parser.allow_abbrev = False  # the README must spell every flag out
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"python -m orchestrator.launch rejects the README's arguments: {shlex.join(argv)}")


def test_readme_launch_commands_parse_and_write_to_shared_storage():
    commands = launch_commands(README.read_text())
    assert len(commands) >= 3
    parsed = [parse_launch(argv) for argv in commands]
    for args in parsed:
        assert args.address == "auto"
        assert args.tracking_uri == "$(cat ~/mlflow_tracking_uri)"
        assert args.output.startswith(f"{SHARED}/runs/") and args.data_root.startswith(f"{SHARED}/")
        assert Path(args.study).is_relative_to("search_spaces") and (REPO / args.study).is_file()
    assert any(args.resume for args in parsed) and any(args.dry_run for args in parsed)
    assert len({args.output for args in parsed}) == 1  # --resume must name the same folder
