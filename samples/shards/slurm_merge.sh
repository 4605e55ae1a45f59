#!/bin/sh
# The merge after a dinomap SLURM array (slurm_array.sh): the run's outputs in $OUT/merged.
#   sbatch --dependency=afterok:ARRAY_JOB_ID slurm_merge.sh
# Refused (exit 1, nothing written) while shards are missing: it names the missing chunk ranges
# and shards; rerun it once the late tasks are done.
#
#SBATCH --job-name=dinomap-merge
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=2:00:00
#SBATCH --output=dinomap-merge-%j.log

set -eu
DINOMAP=${DINOMAP:-dinomap}
OUT=${OUT:-out}

exec "$DINOMAP" merge "$OUT/merged" "$OUT"/shard-* --progress none
