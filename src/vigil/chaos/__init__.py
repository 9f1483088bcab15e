"""The chaos harness, in one place.

- schedules.py: the faults (SIGKILL/SIGSTOP of an agent, partitions of the
  leader, a standby or everyone, packet loss, etcd members killed or frozen,
  a switchover with the raft leader killed) and the named and seeded random
  schedules; each step holds a fault, heals it and restores the lab.
- checker.py: the verdict over a run (overlapping leaderships, stale or
  foreign tokens at the actuator, lost acknowledged writes, no leader after
  a heal), each violation as a sentence.
- run.py: runs schedules on a lab in network namespaces from the client
  namespace and checks the run (`python -m vigil.chaos.run`).

Where it is used: tests/system/test_chaos.py (named and seeded schedules in
CI), bench/chaos.py (hundreds of schedules, takeover times), and, on virtual
time with the real agents, vigil/testing/sim_cluster.py (the same kinds of fault,
thousands of virtual hours). The lab it drives is vigil.lab (netns.py: the
namespaces, bridge and nftables partitions).
"""
