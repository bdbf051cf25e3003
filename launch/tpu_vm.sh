#!/bin/bash
# One config's whole run (data, base model, fine-tunes, evaluation, report) on a Cloud TPU VM pod
# slice: one process per host, jax.distributed set up from the TPU VM's metadata, every batch's
# rows split over every chip (docs/running.md, "Several processes").
#
#   TPU=rltf ZONE=us-central2-b launch/tpu_vm.sh configs/scd.py:paper /mnt/runs/paper [--config.x=...]
#
# Before (once): a slice, the repository on every host, a work directory every host mounts (a
# Filestore NFS share or a GCS FUSE mount: the code writes through ordinary paths, and orbax
# writes each host's part of a checkpoint there):
#   gcloud compute tpus tpu-vm create "$TPU" --zone="$ZONE" --accelerator-type=v4-32 \
#       --version=tpu-ubuntu2204-base
#   gcloud compute tpus tpu-vm scp --recurse . "$TPU":~/rltf --zone="$ZONE" --worker=all
# The environment is made on every host by the first command below:
#   pip install -U -r requirements.txt "jax[tpu]"        # the pins of requirements.txt apply
#
# The LSTM and HALO baselines train on one device: run them afterwards on a single-host machine
# that mounts the same work directory, with the same command without --distributed (finished
# stages are reused).
#
# Resume: a maintenance event or a spot preemption sends SIGTERM; JAX's preemption service agrees a
# step across the hosts, every host saves its part of the checkpoint and the command exits with
# status 143 (the script reports it). Run the script again when the slice is back: it resumes.
set -euo pipefail
CONFIG=${1:?config, e.g. configs/scd.py:paper}
WORKDIR=${2:?work directory mounted on every host}
shift 2
: "${TPU:?name of the TPU VM}" "${ZONE:?its zone}"
on_every_host() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --worker=all --command="$1"
}
on_every_host "cd ~/rltf && { [ -d .venv ] || python3 -m venv .venv; } && . .venv/bin/activate && \
  pip install -q -U -r requirements.txt 'jax[tpu]'"
set +e
on_every_host "cd ~/rltf && . .venv/bin/activate && python launch.py --config=$CONFIG \
  --workdir=$WORKDIR --distributed --config.mesh.data=0 $*"
status=$?
set -e
if [ "$status" -eq 143 ]; then
  echo "preempted with a checkpoint: run the same command again to resume" >&2
fi
exit "$status"
