#!/bin/sh
# dinomap on a SLURM job array: one shard per array task, each into its own folder.
#
#   sbatch slurm_array.sh                       # 8 shards (--array below)
#   sbatch --array=1-32 slurm_array.sh          # or as many as you like
#   submit.sh does both steps: the array, then slurm_merge.sh once every task succeeded.
#
# dinomap reads its shard from SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN, _STEP and _COUNT:
# arrays may start at 0 or 1 or step (--array=0-70:10). A task that dies (node failure,
# --requeue, time limit) resumes where it stopped when it runs again: the chunks it finished
# are kept. Every task must see the same inputs and configuration (a shared filesystem).
#
#SBATCH --job-name=dinomap-map
#SBATCH --array=1-8
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=dinomap-%A_%a.log

set -eu
DINOMAP=${DINOMAP:-dinomap}
CONFIG=${CONFIG:-run.ini}          # the run's INI file (dinomap run --help)
OUT=${OUT:-out}                    # the shards go to $OUT/shard-N, the merge to $OUT/merged
# the same --threads on every task keeps the pixels bit for bit those of one machine's run
THREADS=${SLURM_CPUS_PER_TASK:-${THREADS:-2}}

exec "$DINOMAP" run "$CONFIG" -o "$OUT/shard-$SLURM_ARRAY_TASK_ID" --threads "$THREADS" \
    --progress none
