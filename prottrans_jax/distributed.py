"""Multi-host start-up: `jax.distributed.initialize` from flags, or from the TPU VM itself.

Every process of a multi-host job runs the same command. Before any JAX computation, each
one joins the job:

- explicit flags (`--coordinator_address HOST:PORT --num_processes N --process_id I`): any
  cluster, including several processes on one machine (the CPU tests do this);
- a Cloud TPU VM (a Google TPU on the PCI bus): `jax.distributed.initialize()` with no
  arguments, which reads the slice's workers from the TPU metadata. This also starts JAX's
  preemption service, which turns a maintenance or spot SIGTERM into a step that every
  host agrees on (see checkpoints.PreemptionWatcher);
- otherwise nothing: a single process.

After that, `jax.process_index()` / `jax.process_count()` say who is who; the trainer lets
only process 0 write summaries and the operative config, reads the input shard that
`Partitioner.input_shard()` names, and has every process take part in checkpoints (orbax
coordinates them).

Use from an entry point:

    parser = argparse.ArgumentParser()
    distributed.add_flags(parser)
    args = parser.parse_args()
    distributed.initialize_from_flags(args)   # before anything touches jax devices
"""

from __future__ import annotations

import argparse
import glob
import os

import jax

from prottrans_jax.errors import UserError

# PCI vendor id of Google's TPU chips (what JAX itself looks for to detect a TPU VM).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def on_cloud_tpu_vm() -> bool:
    """True on a Cloud TPU VM: a Google TPU chip is visible on the PCI bus."""
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_file) as handle:
                if handle.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Adds --coordinator_address, --num_processes and --process_id (all or none)."""
    group = parser.add_argument_group(
        "multi-host", "explicit multi-process set-up; not needed on Cloud TPU VMs")
    group.add_argument("--coordinator_address", default=None,
                       help="HOST:PORT of process 0's coordinator")
    group.add_argument("--num_processes", type=int, default=None)
    group.add_argument("--process_id", type=int, default=None)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, initialization_timeout: int = 300) -> str:
    """Joins the multi-host job if there is one; returns how: "explicit", "tpu" or "single".

    Must run before any JAX computation (device queries included). A coordinator on a
    loopback address binds to loopback only, so local multi-process runs open no public port.
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given):
        if not all(given):
            raise UserError("give all of --coordinator_address, --num_processes and "
                             "--process_id, or none of them")
        host = coordinator_address.rsplit(":", 1)[0]
        bind_address = coordinator_address if host in _LOOPBACK_HOSTS else None
        # Cross-process collectives on CPU (tests, CPU clusters) need an implementation; gloo
        # is the one that ships with jaxlib. No effect on TPU or GPU.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes,
            process_id=process_id, coordinator_bind_address=bind_address,
            cluster_detection_method="deactivate",
            initialization_timeout=initialization_timeout)
        return "explicit"
    if on_cloud_tpu_vm():
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
        return "tpu"
    return "single"


def initialize_from_flags(args: argparse.Namespace) -> str:
    """`initialize` with the flags of `add_flags`."""
    return initialize(args.coordinator_address, args.num_processes, args.process_id)


def is_main_process() -> bool:
    """Process 0: the one that writes summaries, configs and console logs."""
    return jax.process_index() == 0


def environment_summary() -> str:
    """One line for logs: which process this is and what it sees."""
    return (f"process {jax.process_index()}/{jax.process_count()} on {os.uname().nodename}: "
            f"{jax.local_device_count()} local of {jax.device_count()} devices "
            f"({jax.devices()[0].platform})")
