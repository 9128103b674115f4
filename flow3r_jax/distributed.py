"""Joining a multi-process JAX job (`jax.distributed`) before anything else touches the devices.

Every process of a job runs the same program; process 0 also hosts the coordinator service, which the
others reach at its "host:port". The cluster is named in one of three ways, per value the first found:

  1. arguments (tools/launch.py flags `--coordinator_address`, `--num_processes`, `--process_id`);
  2. environment variables FLOW3R_COORDINATOR_ADDRESS, FLOW3R_NUM_PROCESSES, FLOW3R_PROCESS_ID
     (Kubernetes pod specs, ssh loops: one value per process without rewriting the command);
  3. nothing: with `auto_detect`, `jax.distributed.initialize()` reads the cluster from the
     environment it recognises (SLURM, Cloud TPU VMs, Open MPI, Kubernetes with the `kubernetes`
     package, mpi4py on request) and from JAX_COORDINATOR_ADDRESS.

The three values are given together or not at all; a value given both as an argument and as an
environment variable must agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import jax

ENV_COORDINATOR_ADDRESS = "FLOW3R_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "FLOW3R_NUM_PROCESSES"
ENV_PROCESS_ID = "FLOW3R_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """An explicitly named job: process 0's coordinator "host:port", the process count, this process."""

    coordinator_address: str
    num_processes: int
    process_id: int


def _pick(name: str, flag_value, env_name: str, environ: Mapping[str, str], parse):
    """The flag value, else the environment value (parsed); both given must agree."""
    raw = environ.get(env_name, "").strip()
    env_value = None
    if raw:
        try:
            env_value = parse(raw)
        except ValueError:
            raise ValueError(f"{env_name}={raw!r}: expected {name} as an integer") from None
    if flag_value is not None and env_value is not None and flag_value != env_value:
        raise ValueError(f"--{name}={flag_value} disagrees with {env_name}={raw}; set one of them")
    return flag_value if flag_value is not None else env_value


def _check_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address {address!r}: expected host:port (e.g. 10.0.0.2:8476), "
                         "the address of process 0 and a free port there")
    return address


def cluster_from(coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The explicitly named cluster (arguments, else FLOW3R_* variables), or None when nothing names one.

    Raises ValueError naming the flag or variable when only some of the three values are given, a
    value is malformed, process_id is outside [0, num_processes), or a flag and its variable disagree.
    """
    environ = os.environ if environ is None else environ
    address = _pick("coordinator_address", coordinator_address or None, ENV_COORDINATOR_ADDRESS, environ, str)
    count = _pick("num_processes", num_processes, ENV_NUM_PROCESSES, environ, int)
    index = _pick("process_id", process_id, ENV_PROCESS_ID, environ, int)
    values = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if all(v is None for v in values.values()):
        return None
    missing = [name for name, value in values.items() if value is None]
    if missing:
        given = ", ".join(f"{name}={value}" for name, value in values.items() if value is not None)
        raise ValueError(f"{given} given without {', '.join(missing)}: name the coordinator address, the "
                         f"process count and this process's id together (flags --coordinator_address, "
                         f"--num_processes, --process_id or {ENV_COORDINATOR_ADDRESS}, {ENV_NUM_PROCESSES}, "
                         f"{ENV_PROCESS_ID}), or none of them to let jax.distributed detect the cluster")
    if count < 1:
        raise ValueError(f"num_processes={count}: expected at least 1")
    if not 0 <= index < count:
        raise ValueError(f"process_id={index} outside [0, {count}) for num_processes={count}")
    return Cluster(_check_address(address), count, index)


def initialize(cluster: Cluster | None, *, auto_detect: bool = False) -> bool:
    """Joins the job named by `cluster`; with cluster None, lets jax detect it if `auto_detect`.

    Must run before any JAX computation or device query. Returns whether jax.distributed was
    initialised (False: a single-process run).
    """
    if cluster is not None:
        jax.distributed.initialize(coordinator_address=cluster.coordinator_address,
                                   num_processes=cluster.num_processes, process_id=cluster.process_id)
    elif auto_detect:
        jax.distributed.initialize()
    else:
        return False
    return True
