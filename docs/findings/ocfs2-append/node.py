"""One node's side of the O_APPEND reproducer (repro.sh drives it through the guest agent).

python3 node.py PATH RUN: holds one fd on PATH, opened O_WRONLY|O_APPEND|O_CREAT; appends each
word read from /run/repro-RUN.fifo as one write(2) of "word\n" and acknowledges it in
/run/repro-RUN.ack with write's count and the fd's position after it (lseek SEEK_CUR, which on
OCFS2 reads f_pos and takes no cluster lock); "quit" closes the fd. Nothing here stats or reads
PATH: that would refresh the node's i_size and hide the bug."""
import os
import sys

path, tag = sys.argv[1], sys.argv[2]
fifo, ack = f"/run/repro-{tag}.fifo", f"/run/repro-{tag}.ack"


def say(line):
    with open(ack, "a") as a:
        a.write(line + "\n")


os.mkfifo(fifo)
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
say("open")
while True:
    with open(fifo) as f:
        words = f.read().split()
    for word in words:
        if word == "quit":
            os.close(fd)
            say("quit")
            sys.exit(0)
        n = os.write(fd, (word + "\n").encode())
        say(f"{word} wrote {n} pos {os.lseek(fd, 0, os.SEEK_CUR)}")
