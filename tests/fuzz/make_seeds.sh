#!/bin/sh
# tests/fuzz/make_seeds.sh — the seeds made by the command line (./build/dinomap, `make` first):
# tiles.gpkg files of real runs (whole, several chunks, one shard of three) for the tileindex
# target, and the cluster.dmseg of `dinomap seg cluster` for the seghead target; then the other
# targets' seeds (make_seeds.py). Each index keeps 4 of its PCA samples and is vacuumed into
# 1 KiB pages: the same schema and rows in a few tens of KB, quick to mutate.
set -e
BIN=${DM_BIN:-./build/dinomap}
W=tests/data/golden/vitl_sat_tiny/backbone.pth
IN=samples/L7_ETMs.tif
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
S=tests/fuzz/seeds
mkdir -p $S/tileindex $S/seghead
run() { "$BIN" features -m $W --bands 3,2,1 $IN --threads 1 -q "$@"; }
run -o "$T/whole"
run -o "$T/chunks" --tile 64 --halo 16 --chunk 2
run -o "$T/shard" --tile 64 --halo 16 --chunk 2 --shard 1/3
"$BIN" seg cluster -m $W --bands 3,2,1 $IN -k 3 --threads 1 -q -o "$T/seg"
cp "$T/seg/cluster.dmseg" $S/seghead/cluster.dmseg
for r in whole chunks shard; do
    /usr/bin/python3 - "$T/$r/tiles.gpkg" "$S/tileindex/$r.gpkg" <<'PY'
import shutil, sqlite3, sys
shutil.copy(sys.argv[1], sys.argv[2])
c = sqlite3.connect(sys.argv[2])
c.execute('delete from samples where rowid not in (select rowid from samples limit 4)')
c.commit()
c.execute('pragma page_size=1024')
c.execute('vacuum')
c.close()
PY
done
/usr/bin/python3 tests/fuzz/make_seeds.py
