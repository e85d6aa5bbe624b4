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
import re
import shlex
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
VENV_RAY = "~/gensearch/.venv/bin/ray"


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


# --- MLflow on the head ----------------------------------------------------------------------

def mlflow_server(config: dict) -> tuple[int, str, dict[str, str | bool]]:
    """(position in head_start_ray_commands, the command, its options) of the one `mlflow server`."""
    found = [(i, c) for i, c in enumerate(config["head_start_ray_commands"]) if "mlflow server" in c]
    assert len(found) == 1, "exactly one head start command runs `mlflow server`"
    assert not any("mlflow server" in c for c in config.get("head_setup_commands", []) + config["setup_commands"])
    index, command = found[0]
    tokens = shlex.split(command.split("mlflow server", 1)[1])
    options: dict[str, str | bool] = {}
    for position, token in enumerate(tokens):
        if token in {">", "&", ";", "|"} or token.startswith(">"):
            break
        if token.startswith("--"):
            following = tokens[position + 1] if position + 1 < len(tokens) else ""
            value = following if following and not following.startswith(("--", ">")) else True
            options[token.split("=", 1)[0]] = token.split("=", 1)[1] if "=" in token else value
    return index, command, options


def check_mlflow_server(config: dict) -> None:
    index, command, options = mlflow_server(config)
    host = options.get("--host")
    assert isinstance(host, str) and host not in {"0.0.0.0", "::", "[::]", "127.0.0.1", "localhost"}
    # The address is the one Ray itself uses for this node: the head's private (VPC / LAN) address.
    variable = re.fullmatch(r"\$\{?(\w+)\}?", host)
    assert variable, f"--host {host!r} should be the head's address, derived in the same command"
    assert re.search(rf"\b{variable.group(1)}=\$\([^\n]*ray\.util\.get_node_ip_address\(\)", command)
    assert options.get("--port") == "5000"
    assert options.get("--serve-artifacts") is True and isinstance(options.get("--artifacts-destination"), str)
    assert str(options.get("--backend-store-uri", "")).startswith(("sqlite:///", "postgresql"))
    allowed = str(options.get("--allowed-hosts", "")).split(",")
    assert "*" not in allowed and "localhost:*" in allowed  # the SSH tunnel's Host header
    # Started in the background after Ray's head, and its URI left where the launch command reads it.
    assert "nohup" in command and command.index("nohup") < command.index("mlflow server")
    starts = [i for i, c in enumerate(config["head_start_ray_commands"]) if "ray start --head" in c]
    assert starts and starts[0] < index
    assert "> ~/mlflow_tracking_uri" in command and f"http://${variable.group(1)}:5000" in command


@by_name(CONFIGS)
def test_head_runs_mlflow_on_its_private_address_port_5000(path):
    check_mlflow_server(load(path))


def test_gpu_cluster_keeps_mlflow_artifacts_in_an_object_store():
    _, _, options = mlflow_server(load(GPU))
    assert str(options["--artifacts-destination"]).startswith("s3://")


@pytest.mark.parametrize("old,new", [
    ('--host "$HEAD_IP"', "--host 0.0.0.0"),           # every interface
    ('--host "$HEAD_IP"', "--host 127.0.0.1"),         # workers and the driver's URI could not reach it
    ("--port 5000", "--port 8080"),
    ("localhost:*,127.0.0.1:*", "*"),                  # Host-header guard switched off
    ("nohup ", ""),                                    # dies with the SSH session
])
def test_mlflow_check_rejects_an_exposed_or_unreachable_server(old, new):
    config = load(GPU)
    index, command, _ = mlflow_server(config)
    assert old in command
    config["head_start_ray_commands"][index] = command.replace(old, new)
    with pytest.raises(AssertionError):
        check_mlflow_server(config)


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
    # setup_commands run on the head and on every worker; the install is one of them.
    installs = [c for c in config["setup_commands"]
                if "cd ~/gensearch" in c and re.search(r"pip install( -\w+)* -e \.(\s|$)", c)]
    assert len(installs) == 1
    assert "3.11" in " ".join(config["setup_commands"])  # pyproject: requires-python >= 3.11
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    assert "torch==2.14.1" in dependencies and "torchvision==0.29.1" in dependencies
    # Ray runs from that environment on every node, so trials import the same packages as the driver.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        ray_calls = re.findall(r"(\S*ray) (?:start|stop)\b", " ".join(config[key]))
        assert ray_calls and set(ray_calls) == {VENV_RAY}, key
    assert "--dashboard-host=0.0.0.0" not in " ".join(config["head_start_ray_commands"])


@by_name(CONFIGS)
def test_every_node_mounts_the_shared_folder_for_output_and_data(path):
    config = load(path)
    mounts = [c for c in config["setup_commands"] if re.search(rf"mount -t nfs4\b.*\s{SHARED}\b", c)]
    assert len(mounts) == 1 and f"mountpoint -q {SHARED}" in mounts[0]
    head_setup = " ".join(config["head_setup_commands"])
    assert f"{SHARED}/data" in head_setup and f"{SHARED}/runs" in head_setup


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
    text = text.replace("\\\n", " ")
    return [shlex.split(args) for args in re.findall(r"\.venv/bin/python -m orchestrator\.launch ([^'\n]+)", text)]


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
