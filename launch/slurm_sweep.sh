#!/bin/bash
# Every cohort of a sweep on SLURM, against one shared base model per training seed:
#   1. prepare: the data and the base model(s), on PREPARE_GPUS GPUs (default 8, one node);
#   2. a job array, after 1 succeeded: one task per run and seed (`python -m rltf_jax.batch list`
#      prints them), one GPU each, all at once;
#   3. the table, after every task succeeded: `python -m rltf_jax.sweep`, which finds the runs
#      finished and writes <WORKDIR>/sweeps/<sweep>/table.md.
#
#   launch/slurm_sweep.sh configs/sweeps/rare_cohorts.py:paper /shared/runs/rare-paper [--seeds=0,1,2]
#
# Run it from the repository root with the environment active (see launch/slurm_gpu.sbatch); extra
# sbatch options (partition, account) go in SBATCH_PARTITION / SBATCH_ACCOUNT etc., which sbatch
# reads from the environment.
#
# Resume: jobs requeue themselves after a preemption (status 143, see launch/slurm_job.sbatch). If a
# task failed, the table job never starts: fix the cause and run this script again: the prepare
# job and the finished tasks find their work done and return in seconds.
set -euo pipefail
SWEEP=${1:?sweep config, e.g. configs/sweeps/rare_cohorts.py:paper}
WORKDIR=${2:?work directory on a shared file system}
shift 2
GPUS=${PREPARE_GPUS:-8}
N=$(python -m rltf_jax.batch count --config="$SWEEP" "$@")
prepare=$(sbatch --parsable --job-name=rltf-prepare --gpus-per-node="$GPUS" --ntasks-per-node="$GPUS" \
    launch/slurm_job.sbatch prepare "$SWEEP" "$WORKDIR" "$@")
tasks=$(sbatch --parsable --job-name=rltf-task --dependency=afterok:"$prepare" --array=0-$((N - 1)) \
    launch/slurm_job.sbatch task "$SWEEP" "$WORKDIR" "$@")
table=$(sbatch --parsable --job-name=rltf-table --dependency=afterok:"$tasks" \
    launch/slurm_job.sbatch table "$SWEEP" "$WORKDIR" "$@")
echo "prepare $prepare, $N tasks in array $tasks, table $table"
