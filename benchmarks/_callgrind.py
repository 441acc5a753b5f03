"""Running a child under callgrind and reading its dumps: what ir_node.py, ir_lane.py,
ir_peermac.py and ab_store.py --callgrind share.

The child marks its workloads with time.sleep(0): `--dump-before=time_sleep` makes a dump
at each mark, so dump 1 holds what ran before the first mark (start-up, warm-up), and each
workload is one dump followed by an empty one (between two marks)."""
import glob
import re
import subprocess
import sys

TIMEOUT = 1800


def run(child_argv, out, cwd, collect=("--collect-atstart=yes",), timeout=TIMEOUT):
    """Run `python child_argv...` in `cwd` (a checkout: its kvnet and compiled extensions)
    under callgrind, dumps to `out`.N; -> the instructions of each dump, in order."""
    cmd = ["valgrind", "--tool=callgrind", *collect, "--dump-before=time_sleep",
           f"--callgrind-out-file={out}", sys.executable, *child_argv]
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=timeout)
    counts = []
    for path in sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        with open(path) as f:
            m = re.search(r"^summary: (\d+)", f.read(), re.M)
        counts.append(int(m.group(1)) if m else 0)
    return counts


def workloads(counts, n, per):
    """Instructions per operation of each of the `n` workloads (dump 1 + 2i), `per` being
    the operations of each (a number, or a list of one per workload)."""
    if len(counts) < 2 * n:
        raise RuntimeError(f"{len(counts)} callgrind dumps, {2 * n} expected at least")
    per = per if type(per) is list else [per] * n
    return [counts[1 + 2 * i] / per[i] for i in range(n)]


def print_rows(rows, width=40, cell=9, label="  vs first"):
    """Each (name, [values]) row, and under every row but the first its change against the
    first in percent."""
    first = rows[0][1]
    for name, vals in rows:
        print(f"{name:{width}} " + "  ".join(f"{v:{cell},.0f}" for v in vals))
        if vals is not first:
            print(f"{label:{width}} " + "  ".join(f"{(v / b - 1) * 100:+{cell - 1}.2f}%"
                                               for v, b in zip(vals, first)))
