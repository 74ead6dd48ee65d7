#!/bin/bash
# The O_APPEND reproducer of docs/findings/ocfs2-append.md, step by step through the guest agent,
# on nodes a and b of a running OCFS2 cluster: A opens, B opens, A appends A1, B appends B1,
# A appends A2, both close, both read. Each node's fd is held by node.py (put to /root/), fed
# through a FIFO; each step is confirmed done before the next is sent. With STAT=1 the writer
# stats the file before each append (the control: that hides the bug).
#
#   docs/findings/ocfs2-append/repro.sh CLUSTER.toml [RUN-NAME [MOUNTPOINT]]   (from the checkout)
set -e -o pipefail
CONF=${1:?the cluster file}; RUN=${2:-$(date +%H%M%S)}; F=${3:-/data}/append-repro-$RUN
HERE=$(dirname "$0")
doit() {  # what a step printed, but doit's own lines for a step that went well
    .venv/bin/doit config="$CONF" "$@" 2>&1 | { grep -v -E '^\.  p(ssh|put)$|: exit 0$|^--- .* \(exit 0\)$' || true; }
}
wait_for() {  # a shell loop, run on the node, until node.py acknowledged $1
    echo "for i in \$(seq 300); do grep -qx '$1' /run/repro-$RUN.ack 2>/dev/null && break; sleep 0.1; done;" \
         "grep -qx '$1' /run/repro-$RUN.ack"
}
start() { doit pssh --on "$1" "setsid python3 /root/repro_node.py $F $RUN </dev/null >/run/repro-$RUN.log 2>&1 & $(wait_for open)"; }
append() { doit pssh --on "$1" "${STAT:+stat -c %s $F >/dev/null; }echo $2 > /run/repro-$RUN.fifo; $(wait_for "$2 wrote .*")"; }
doit pput "$HERE/node.py" /root/repro_node.py >/dev/null
start a
start b
append a A1
append b B1
append a A2
for n in a b; do doit pssh --on $n "echo quit > /run/repro-$RUN.fifo; $(wait_for quit)"; done
for n in a b; do
    echo "--- $n: its acknowledgements, then the file as it reads it"
    doit pssh --on $n "cat /run/repro-$RUN.ack; python3 -c 'import sys; print(repr(open(sys.argv[1], \"rb\").read()))' $F"
done
