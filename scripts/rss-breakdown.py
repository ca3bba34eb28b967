#!/usr/bin/env python3
"""Where a plugin process's resident memory is, at its last moment.

Runs a CNI plugin under gdb, stops it at the exit_group system call (when its peak has been
reached and nothing has been unmapped yet) and sorts /proc/<pid>/smaps into: the binary's
own pages (code, read-only data, writable data), the C library and loader, heap (brk),
stacks, and anonymous mappings (mmap'd allocations, Go's heap and goroutine stacks).

    scripts/rss-breakdown.py BINARY < config.json     (CNI_* variables from the environment)

Prints one line per group: Rss KiB (of which file-backed and shared with other processes),
then VmHWM (the kernel's peak RSS) and VmRSS at that moment.
"""
import os
import subprocess
import sys
import tempfile

GDB_SCRIPT = r'''
import gdb
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("catch syscall exit_group")
gdb.execute("run < " + STDIN + " > /dev/null")
pid = gdb.selected_inferior().pid
with open(OUT, "w") as out:
    out.write(open("/proc/%d/smaps" % pid).read())
    out.write("#STATUS\n" + open("/proc/%d/status" % pid).read())
gdb.execute("kill")
'''


def groups(smaps, binary):
    name = None
    perms = ""
    sums = {}
    real = os.path.realpath(binary)
    for line in smaps.splitlines():
        parts = line.split()
        if not parts:
            continue
        if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
            perms = parts[1]
            name = parts[5] if len(parts) > 5 else ""
            continue
        if parts[0] not in ("Rss:", "Shared_Clean:", "Shared_Dirty:", "Anonymous:"):
            continue
        if name and os.path.realpath(name) == real:
            g = "binary " + {"r-xp": "code", "r--p": "read-only data", "rw-p": "writable data"}.get(perms, perms)
        elif name and ("libc.so" in name or "libc-" in name):
            g = "libc"
        elif name and "ld-linux" in name:
            g = "ld.so"
        elif name and name.startswith("/"):
            g = "other libraries: " + os.path.basename(name)
        elif name == "[heap]":
            g = "heap (brk)"
        elif name == "[stack]":
            g = "main stack"
        elif name in ("[vdso]", "[vvar]", "[vsyscall]", "[vvar_vclock]"):
            g = "vdso/vvar"
        else:
            g = "anonymous mmap"
        s = sums.setdefault(g, {"Rss:": 0, "Shared_Clean:": 0, "Shared_Dirty:": 0, "Anonymous:": 0})
        s[parts[0]] += int(parts[1])
    return sums


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        stdin = os.path.join(d, "stdin")
        with open(stdin, "wb") as f:
            f.write(sys.stdin.buffer.read())
        out = os.path.join(d, "smaps")
        script = os.path.join(d, "run.py")
        with open(script, "w") as f:
            f.write("STDIN = %r\nOUT = %r\n" % (stdin, out) + GDB_SCRIPT)
        subprocess.run(["gdb", "-q", "-nx", "-batch", "-x", script, "--args", binary],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        text = open(out).read()
    smaps, status = text.split("#STATUS\n")
    sums = groups(smaps, binary)
    total = 0
    print("%-40s %8s %8s %8s" % ("group", "Rss KiB", "anon", "shared"))
    for g, s in sorted(sums.items(), key=lambda kv: -kv[1]["Rss:"]):
        if s["Rss:"] == 0:
            continue
        total += s["Rss:"]
        print("%-40s %8d %8d %8d" % (g, s["Rss:"], s["Anonymous:"], s["Shared_Clean:"] + s["Shared_Dirty:"]))
    print("%-40s %8d" % ("total", total))
    for line in status.splitlines():
        if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile", "Threads")):
            print(line)


if __name__ == "__main__":
    main()
