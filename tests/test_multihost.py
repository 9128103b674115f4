"""Multi-process training on one machine: two `tools/launch.py` processes x two CPU devices joined by
jax.distributed on loopback (data=2 x fsdp=2 mesh over the four devices), as a multi-host job runs.

- one uninterrupted two-process run is the reference;
- a second run is killed (SIGKILL, both processes) after a checkpoint, relaunched, preempted (SIGTERM
  to process 1 only: both processes save the same step and exit 0), relaunched again and finished;
  its losses equal the reference's exactly (bit-identical on CPU);
- over one epoch the two processes' Grain iterators together read every record exactly once, and
  the samples are those of a single process reading the whole stream;
- cluster naming through flags or FLOW3R_* variables, and its errors.

The children compile without the persistent compilation cache: JAX writes that cache from process 0
only, so with a warm cache process 0 would start its first cross-process collective long before
process 1 finished compiling, and CPU (gloo) collectives give up after 30 s of waiting for a peer.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from support import ROOT, child_env, logged_scalars, start_launcher, tiny_config

from flow3r_jax import distributed
from flow3r_jax.data import pipeline
from flow3r_jax.data.buckets import train_buckets
from flow3r_jax.data.synthetic_dataset import ensure_synthetic_dataset

TOTAL_STEPS = 12
CHECKPOINT_EVERY = 3
NUM_PROCESSES = 2
# Two of the tiny recipe's buckets (2 frames, landscape and portrait) keep the compiles of the four
# launches affordable on a 2-core machine.
RUN_ARGS = ("--config.data.frame_counts=(2,)", "--config.mesh.data=2", "--config.mesh.fsdp=2",
            f"--config.total_steps={TOTAL_STEPS}",
            f"--config.checkpoint.every_steps={CHECKPOINT_EVERY}", "--config.logging.every_steps=1",
            "--config.optimizer.warmup_steps=2", "--config.evals.held_out.every_steps=0",
            "--config.logging.image_every_steps=0")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _process_env(**extra) -> dict:
    """Two CPU devices per process (the 8-device flag of conftest removed), no persistent cache."""
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                         if not f.startswith("--xla_force_host_platform_device_count"))
    return {"XLA_FLAGS": xla_flags, "JAX_NUM_CPU_DEVICES": "2", "JAX_COMPILATION_CACHE_DIR": None,
            "JAX_ENABLE_COMPILATION_CACHE": "false", "JAX_DEFAULT_MATMUL_PRECISION": "highest", **extra}


def _log(workdir, process_id):
    return workdir.parent / f"{workdir.name}.p{process_id}.log"


def _launch_job(cache_root, workdir):
    """Both processes of a two-process job (cluster named by flags), started concurrently."""
    port = _free_port()
    args = ["--config", str(ROOT / "configs" / "flow3r_tiny.py"), f"--config.data.cache_dir={cache_root}", *RUN_ARGS,
            f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={NUM_PROCESSES}"]
    return [start_launcher(workdir, [*args, f"--process_id={p}"], _log(workdir, p), _process_env())
            for p in range(NUM_PROCESSES)]


def _wait(job, workdir, timeout=1800):
    codes = [process.wait(timeout=timeout) for process in job]
    return codes, "\n".join(_log(workdir, p).read_text()[-3000:] for p in range(NUM_PROCESSES))


def _kill(job):
    for process in job:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for(condition, job, what, timeout=1800):
    deadline = time.monotonic() + timeout
    while not condition():
        assert all(p.poll() is None for p in job), f"a process ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _iterator_states(step_dir):
    """The per-process Grain iterator state files of a checkpoint step."""
    return sorted(name for name in os.listdir(step_dir / "data_iter") if name.startswith("process_"))


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost") / "synthetic"
    ensure_synthetic_dataset(tiny_config(root).data)
    return root


@pytest.fixture(scope="module")
def reference_run(synthetic_dir, tmp_path_factory):
    """The uninterrupted two-process run, started in the background when a test first asks for it."""
    workdir = tmp_path_factory.mktemp("runs") / "reference"
    job = _launch_job(synthetic_dir, workdir)
    yield workdir, job
    _kill(job)


def test_killed_and_preempted_job_resumes_with_the_uninterrupted_losses(synthetic_dir, reference_run, tmp_path):
    workdir = tmp_path / "interrupted"
    checkpoints = workdir / "checkpoints"

    # SIGKILL both processes once the first checkpoint is finalised.
    job = _launch_job(synthetic_dir, workdir)
    try:
        _wait_for(lambda: (checkpoints / str(CHECKPOINT_EVERY)).exists(), job, "the first checkpoint")
    finally:
        _kill(job)
    assert [p.returncode for p in job] == [-signal.SIGKILL] * NUM_PROCESSES
    assert _iterator_states(checkpoints / str(CHECKPOINT_EVERY)) == ["process_0-of-2.json", "process_1-of-2.json"]

    # Relaunch; once it has trained a step past the checkpoint it resumed from, SIGTERM process 1 only.
    job = _launch_job(synthetic_dir, workdir)
    try:
        resumed = re.compile(r"\bstep (\d+)/")
        log_start = _log(workdir, 0).stat().st_size

        def trained_after_resume():
            steps = resumed.findall(_log(workdir, 0).read_text()[log_start:])
            return bool(steps) and int(steps[-1]) > CHECKPOINT_EVERY

        _wait_for(trained_after_resume, job, "a step after the resumption")
        job[1].send_signal(signal.SIGTERM)
        codes, logs = _wait(job, workdir)
    finally:
        _kill(job)
    assert codes == [0] * NUM_PROCESSES, logs
    preempted = [re.findall(r"preemption at step (\d+)", _log(workdir, p).read_text()) for p in range(NUM_PROCESSES)]
    assert all(len(steps) == 1 for steps in preempted), logs
    saved = int(preempted[0][0])
    assert int(preempted[1][0]) == saved and CHECKPOINT_EVERY < saved < TOTAL_STEPS
    assert max(int(name) for name in os.listdir(checkpoints) if name.isdigit()) == saved
    assert _iterator_states(checkpoints / str(saved)) == ["process_0-of-2.json", "process_1-of-2.json"]

    # The second relaunch resumes from the preemption checkpoint and finishes.
    job = _launch_job(synthetic_dir, workdir)
    try:
        codes, logs = _wait(job, workdir)
    finally:
        _kill(job)
    assert codes == [0] * NUM_PROCESSES, logs
    for p in range(NUM_PROCESSES):
        assert f"starting at step {saved} of {TOTAL_STEPS}" in _log(workdir, p).read_text()

    reference_dir, reference = reference_run
    codes, logs = _wait(reference, reference_dir)
    assert codes == [0] * NUM_PROCESSES, logs
    expected, got = logged_scalars(reference_dir, "loss"), logged_scalars(workdir, "loss")
    assert sorted(expected) == sorted(got) == list(range(1, TOTAL_STEPS + 1))
    for step in expected:
        assert np.isfinite(expected[step])
        np.testing.assert_array_equal(got[step], expected[step], err_msg=f"step {step}")  # bit-identical


def read_one_epoch(cache_root: str, out_dir: str) -> None:
    """Child process of the epoch test: joins the job named by FLOW3R_* variables, reads one epoch of
    this process's training batches and the (source, record) keys of its samples into out_dir."""
    distributed.initialize(distributed.cluster_from())
    import jax

    config = tiny_config(cache_root)
    steps = config.data.num_train_clips // config.global_batch_size
    kwargs = dict(seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count())
    buckets = train_buckets(config.data, global_batch_size=config.global_batch_size)
    batches = pipeline.make_train_iterator(config.data, buckets=buckets, **kwargs)
    images = np.stack([next(batches)["images"] for _ in range(steps)])
    records = pipeline.host_record_stream(config.data, **kwargs)
    keys = np.array([records[k] for k in range(steps * config.global_batch_size // jax.process_count())])
    np.savez(os.path.join(out_dir, f"process_{jax.process_index()}.npz"), images=images, keys=keys)


def test_processes_together_read_every_record_once_per_epoch(synthetic_dir, tmp_path):
    port = _free_port()
    code = f"import test_multihost; test_multihost.read_one_epoch({str(synthetic_dir)!r}, {str(tmp_path)!r})"
    env = child_env(_process_env(FLOW3R_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                 FLOW3R_NUM_PROCESSES=str(NUM_PROCESSES),
                                 PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")])))
    children = [subprocess.Popen([sys.executable, "-c", code], env=dict(env, FLOW3R_PROCESS_ID=str(p)), cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for p in range(NUM_PROCESSES)]
    outputs = [child.communicate(timeout=300)[0].decode()[-3000:] for child in children]
    assert [child.returncode for child in children] == [0] * NUM_PROCESSES, outputs

    read = [np.load(tmp_path / f"process_{p}.npz") for p in range(NUM_PROCESSES)]
    config = tiny_config(synthetic_dir)
    keys = np.concatenate([r["keys"] for r in read])
    assert sorted(map(tuple, keys.tolist())) == [(0, i) for i in range(config.data.num_train_clips)]

    # Global sample g is read by process g mod 2: interleaving the processes' batches gives exactly the
    # batches of one process reading the whole stream.
    buckets = train_buckets(config.data, global_batch_size=config.global_batch_size)
    single = pipeline.make_train_iterator(config.data, buckets=buckets, seed=config.seed,
                                          process_index=0, process_count=1)
    for step in range(read[0]["images"].shape[0]):
        whole = next(single)["images"]
        for p in range(NUM_PROCESSES):
            np.testing.assert_array_equal(read[p]["images"][step], whole[p::NUM_PROCESSES])


def test_cluster_from_flags_and_environment():
    assert distributed.cluster_from(environ={}) is None
    named = distributed.Cluster("10.0.0.2:8476", 4, 3)
    assert distributed.cluster_from("10.0.0.2:8476", 4, 3, environ={}) == named
    environ = {distributed.ENV_COORDINATOR_ADDRESS: "10.0.0.2:8476", distributed.ENV_NUM_PROCESSES: "4",
               distributed.ENV_PROCESS_ID: "3"}
    assert distributed.cluster_from(environ=environ) == named
    assert distributed.cluster_from(process_id=3, environ=environ) == named  # agreeing flag and variable
    with pytest.raises(ValueError, match="--process_id=1 disagrees with FLOW3R_PROCESS_ID=3"):
        distributed.cluster_from(process_id=1, environ=environ)
    with pytest.raises(ValueError, match="coordinator_address=10.0.0.2:8476 given without num_processes, process_id"):
        distributed.cluster_from("10.0.0.2:8476", environ={})
    with pytest.raises(ValueError, match=r"process_id=4 outside \[0, 4\)"):
        distributed.cluster_from("10.0.0.2:8476", 4, 4, environ={})
    with pytest.raises(ValueError, match="expected host:port"):
        distributed.cluster_from("10.0.0.2", 4, 0, environ={})
    with pytest.raises(ValueError, match="FLOW3R_NUM_PROCESSES='four': expected num_processes as an integer"):
        distributed.cluster_from(environ={**environ, distributed.ENV_NUM_PROCESSES: "four"})


def test_launcher_rejects_an_incomplete_cluster(tmp_path):
    process = start_launcher(tmp_path / "run", ["--config", str(ROOT / "configs" / "flow3r_tiny.py"), "--process_id=1"],
                             tmp_path / "launch.log", _process_env(FLOW3R_NUM_PROCESSES="2"))
    assert process.wait(timeout=120) != 0
    log = (tmp_path / "launch.log").read_text()
    assert "num_processes=2, process_id=1 given without coordinator_address" in log, log[-2000:]
    assert not (tmp_path / "run").exists()
