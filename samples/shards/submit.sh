#!/bin/sh
# Submits the dinomap array (slurm_array.sh) and its merge (slurm_merge.sh), the merge held
# until every array task succeeded. Pass sbatch options for the array, e.g. --array=1-32.
set -eu
cd "$(dirname "$0")"
jid=$(sbatch --parsable "$@" slurm_array.sh)
jid=${jid%%;*}
sbatch --dependency=afterok:"$jid" slurm_merge.sh
echo "array job $jid; the merge runs when it is done"
