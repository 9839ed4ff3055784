#!/usr/bin/env python3
# Measures pbchatd RSS per idle client: N connections say hello and join, then sit idle.
# Usage: start pbchatd -c config/primary.toml, then: scripts/idle_rss.py 10000
import socket, json, os, sys, time, subprocess
pid = int(subprocess.check_output(["pgrep","-n","pbchatd"]).split()[0])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
before = rss()
n = int(sys.argv[1])
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 7400))
    s.sendall((json.dumps({"type":"hello","version":1,"nick":f"u{i}","session":f"s{i}"})+"\n"+json.dumps({"type":"join","room":f"room{i%100}"})+"\n").encode())
    socks.append(s)
time.sleep(3)
for s in socks:
    s.setblocking(False)
    try:
        while s.recv(1<<20): pass
    except BlockingIOError: pass
time.sleep(1)
after = rss()
print(f"{n} idle clients: RSS {before} KiB -> {after} KiB, {(after-before)*1024/n:.0f} bytes per connection")
