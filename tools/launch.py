"""Train Flow3r: `python tools/launch.py --config configs/flow3r_tiny.py --workdir /tmp/run`.

Config values are overridden with `--config.<key>=<value>` (e.g. `--config.total_steps=50`); unknown
keys and values of the wrong type stop the launch with an error naming the key. The resolved config is
written to <workdir>/config.json. On several hosts every process runs this same command and joins the
job before anything else (flow3r_jax/distributed.py): with `--coordinator_address`, `--num_processes`
and `--process_id` (or FLOW3R_COORDINATOR_ADDRESS, FLOW3R_NUM_PROCESSES, FLOW3R_PROCESS_ID), or with
`--multihost` alone where jax detects the cluster (SLURM, Cloud TPU VMs, Open MPI, Kubernetes).
`--verbosity=1` also shows the INFO lines of the libraries underneath (Orbax, Grain, JAX).
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (ml_collections).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory (local path or gs:// URL) for the config, checkpoints "
                               "and TensorBoard logs (default: config.workdir).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-process job whose coordinator, process count and "
                               "id jax.distributed detects (SLURM, Cloud TPU, Open MPI, Kubernetes).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0's coordinator service "
                                   "(default: $FLOW3R_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (default: $FLOW3R_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes) "
                                   "(default: $FLOW3R_PROCESS_ID).")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from flow3r_jax import distributed

    try:
        cluster = distributed.cluster_from(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    distributed.initialize(cluster, auto_detect=_MULTIHOST.value)
    import jax
    from absl import logging

    from flow3r_jax.train import console, loop

    console.quiet_library_logs(flags.FLAGS.verbosity < 1)
    config = _CONFIG.value
    if _WORKDIR.value:
        config.workdir = _WORKDIR.value
    if not config.workdir:
        raise app.UsageError("no work directory: pass --workdir or --config.workdir")
    logging.info("process %d of %d, %d devices", jax.process_index(), jax.process_count(), jax.device_count())
    loop.train_and_evaluate(config, config.workdir)


if __name__ == "__main__":
    app.run(main)
