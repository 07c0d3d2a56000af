"""The cluster recipes in docs/cluster/ name the README's study command (entry point and arguments), mount the
shared storage where its paths point, and the Ray cluster YAML passes Ray's own cluster-config schema."""

import argparse
import json
import re
import shlex
from pathlib import Path

import jsonschema
import ray
import yaml

from medtransfer.study.cli_commands import register

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "docs" / "cluster"
SHARED = "/shared"


def readme_command() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### A study on a cluster (Ray)"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


def sbatch_command() -> list[str]:
    text = (RECIPES / "slurm.sbatch").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("medtransfer ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def rayjob_documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((RECIPES / "rayjob.yaml").read_text())}


def test_every_recipe_runs_the_readme_command():
    command = readme_command()
    assert command[:3] == ["medtransfer", "study", "run"]
    assert shlex.split(rayjob_documents()["RayJob"]["spec"]["entrypoint"]) == command
    assert sbatch_command() == command
    ray_exec = re.findall(r"^ray exec docs/cluster/ray-cluster.yaml '(medtransfer study run [^']*)'",
                          (REPO / "docs" / "cluster.md").read_text(), re.M)
    assert [shlex.split(line) for line in ray_exec] == [command]


def test_the_command_parses_and_every_path_it_names_is_on_the_shared_storage():
    parser = argparse.ArgumentParser(prog="medtransfer")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(readme_command()[1:])
    assert (args.executor, args.address, args.cpus_per_run, args.gpus_per_run) == ("ray", "auto", 4.0, 1.0)
    for path in (args.study_file, args.study_dir, args.data_root):
        assert path.startswith(SHARED + "/"), path
    # /shared/medtransfer is the checkout: the study file is one of the shipped ones
    assert (REPO / Path(args.study_file).relative_to(SHARED + "/medtransfer")).is_file()


def test_the_ray_cluster_yaml_passes_rays_schema_and_mounts_the_shared_storage_on_every_node():
    config = yaml.safe_load((RECIPES / "ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    # initialization_commands run on the head and on every worker
    assert any(re.search(rf"mount -t nfs4 .* {SHARED}$", line) for line in config["initialization_commands"])
    assert any("--head --port=6379" in line for line in config["head_start_ray_commands"])
    assert any("--address=$RAY_HEAD_IP:6379" in line for line in config["worker_start_ray_commands"])
    assert any(f"{SHARED}/medtransfer[ray]" in line for line in config["setup_commands"])


def test_the_rayjob_mounts_one_read_write_many_volume_at_the_same_path_in_every_pod():
    documents = rayjob_documents()
    claim = documents["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = documents["RayJob"]["spec"]["rayClusterSpec"]
    pods = [spec["headGroupSpec"]["template"]["spec"]] + [group["template"]["spec"] for group in spec["workerGroupSpecs"]]
    assert len(pods) == 2
    for pod in pods:
        volumes = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert mounts == {SHARED: claim["metadata"]["name"]}
            assert container["image"].split(":")[1].startswith(spec["rayVersion"])
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the driver's pod takes no runs
    workers = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert workers["nvidia.com/gpu"] == "4" and workers["cpu"] == "16"  # 4 runs of 4 CPUs + 1 GPU per worker


def test_the_sbatch_script_starts_a_raylet_on_every_node_before_the_study():
    text = (RECIPES / "slurm.sbatch").read_text().replace("\\\n", " ")
    head = text.index("ray start --head")
    workers = text.index('ray start --address="$HEAD_IP:$PORT"')
    study = text.index("medtransfer study run")
    assert head < workers < study
    assert 'for NODE in "${NODES[@]:1}"' in text
    assert "#SBATCH --gpus-per-node=4" in text and '--num-gpus="$GPUS_PER_NODE"' in text and "GPUS_PER_NODE=4" in text
    assert f"source {SHARED}/medtransfer/.venv/bin/activate" in text
