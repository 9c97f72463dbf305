#!/bin/bash
# Regenerates the per-algorithm tables of perf/RESULTS.md ("Algorithm family") from the raw
# collx-bench JSON of perf/algo_sweep.py runs and the link parameters of the same day.
#   bash perf/issue3_tables.sh [DIR [ONEHOST[:ONEHOST2...]]]   (default perf/results/2026-11-23)
# ONEHOST: a directory of perf/algo_sweep.py --interleave runs on one host (its own
# links-onehost-np{2,4}.json and algos/); its tables replace DIR's one-host ones and take
# each algorithm's best interleaved round (algo_table.py --stat best). The shaped clusters
# always come from DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-perf/results/2026-11-23}
A=$D/algos
# ONEHOST may be DIR1:DIR2:... (repeated interleaved runs): links from the first, the
# records of all of them (each algorithm's best round over every run)
ONE=${2:-$D}
O=${ONE%%:*}
STAT=median
[ -n "${2:-}" ] && STAT=best
onehost() {   # onehost np2|np4|np8: the record files of every ONEHOST directory
    local d
    for d in ${ONE//:/ }; do ls $d/algos/onehost-$1-*.jsonl; done
}
# the shaped inter-host class: alpha/beta of a 2-rank ring between two netns hosts at 1 Gbit
python3 - "$D" <<'PY'
import json, sys
d = sys.argv[1]
links = json.load(open(f"{d}/links-onehost-np2.json"))
links = {k: v for k, v in links.items() if k == "shm"}
links["net"] = {"alpha_s": 9e-6, "beta_Bps": 119e6, "gamma_s_per_B": 1.7e-11,
                "_from": "collx-bench ring np 2, one rank on each of 2 netns hosts at 1gbit: "
                         "18 us at 8 B (2 messages), 119 MB/s at 64 MiB"}
json.dump(links, open(f"{d}/links-netns.json", "w"), indent=1)
PY
{
echo "#### One host, np 2 (links: $O/links-onehost-np2.json)"
python3 perf/algo_table.py --replicas --stat $STAT --links $O/links-onehost-np2.json $(onehost np2)
echo
echo "#### One host, np 4 on 2 cores (links: $O/links-onehost-np4.json, calibrated at np 4)"
python3 perf/algo_table.py --replicas --stat $STAT --links $O/links-onehost-np4.json $(onehost np4)
echo
echo "#### One host, np 8 on 2 cores, small messages (links: the np 4 calibration)"
python3 perf/algo_table.py --replicas --stat $STAT --links $O/links-onehost-np4.json $(onehost np8)
echo
echo "#### netns 2 hosts x 2 ranks, 1 Gbit links (links: $D/links-netns.json)"
python3 perf/algo_table.py --replicas --links $D/links-netns.json --hosts 2x2 $A/netns2x2-1gbit-*.jsonl
echo
echo "#### netns 4 worker hosts + 4 server hosts, 1 rank each, 1 Gbit links"
python3 perf/algo_table.py --replicas --links $D/links-netns.json --hosts 4x1+4servers \
    $A/netns4x1+4-1gbit-allreduce-*.jsonl
} | tee /tmp/issue3_tables.md
python3 - <<'PY'
import re
text = open("/tmp/issue3_tables.md").read()
pts = re.findall(r"measured fastest at (\d+) of (\d+) points", text)
strict = re.findall(r"strictly unique and fastest: (\d+) of (\d+)", text)
h, n = sum(int(a) for a, _ in pts), sum(int(b) for _, b in pts)
s = sum(int(a) for a, _ in strict)
near = re.findall(r"within 10% of the fastest at (\d+) of (\d+)", text)
w = sum(int(a) for a, _ in near)
print(f"\n**All clusters: the model's first choice is the measured fastest at {h} of {n} points "
      f"({100 * h / n:.0f}%); its pick measured within 10% of the fastest at {w} of {n} "
      f"({100 * w / n:.0f}%); strictly unique and fastest at {s} of {n}.**")
PY
