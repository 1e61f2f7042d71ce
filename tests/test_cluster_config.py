"""Batch-queue cluster configuration: the job scripts dask-jobqueue would submit
(generated, not submitted: no SLURM/LSF/PBS on this machine)."""

from __future__ import annotations

import pytest

from organet.blockwise.cluster import jobqueue_kwargs, load_cluster_config, make_jobqueue_cluster
from organet.errors import ConfigError

CONFIG = """
jobqueue:
  slurm:
    queue: gpu_a100
    account: cellmap
    cores: 8
    memory: 64GB
    walltime: "04:00:00"
    gpus: 1
    job_script_prologue: ["module load cuda/12.4"]
  lsf:
    queue: gpu_l4
    cores: 4
    memory: 32GB
    walltime: "02:00"
    gpus: 1
  pbs:
    queue: workq
    cores: 4
    memory: 16GB
"""


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "jobqueue.yaml"
    p.write_text(CONFIG)
    return p


def script(kind, config, **kw) -> str:
    cluster = make_jobqueue_cluster(kind, config, **kw)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def test_slurm_job_script_from_config(config):
    s = script("slurm", config, walltime="08:00:00")  # an option overrides the file
    for want in (
        "#SBATCH -p gpu_a100",
        "#SBATCH -A cellmap",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=60G",
        "#SBATCH -t 08:00:00",
        "#SBATCH --gres=gpu:1",
        "module load cuda/12.4",
        "--nthreads 8",
    ):
        assert want in s, (want, s)


def test_lsf_and_pbs_job_scripts(config):
    s = script("lsf", config)
    for want in ("#BSUB -q gpu_l4", "#BSUB -n 4", '#BSUB -gpu "num=1"', "#BSUB -W 02:00"):
        assert want in s, (want, s)
    s = script("pbs", config, queue="short")
    assert "#PBS -q short" in s and "#PBS -l select=1:ncpus=4:mem=15GB" in s


def test_cluster_config_errors(config, tmp_path):
    with pytest.raises(ValueError, match=r"unknown slurm cluster setting\(s\) \['partition'\]"):
        jobqueue_kwargs("slurm", None, partition="x", cores=1, memory="1GB")
    with pytest.raises(ValueError, match="needs 'memory'"):
        jobqueue_kwargs("slurm", None, cores=2)
    with pytest.raises(ConfigError, match="cluster config not found"):
        load_cluster_config(tmp_path / "missing.yaml", "slurm")
    flat = tmp_path / "flat.yaml"
    flat.write_text("cores: 2\nmemory: 4GB\n")
    assert jobqueue_kwargs("pbs", flat) == {"cores": 2, "memory": "4GB", "processes": 1}
    only_slurm = tmp_path / "s.yaml"
    only_slurm.write_text("slurm: {cores: 2, memory: 4GB}\n")
    with pytest.raises(ValueError, match="no 'lsf:' section"):
        load_cluster_config(only_slurm, "lsf")
