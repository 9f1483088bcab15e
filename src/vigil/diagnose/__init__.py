"""`vigil diagnose`: the troubleshooting matrix as code. From the cluster's
event log and status, the kernel log (NVRM Xid lines), the agents' logs, a
corosync log (operators coming from Pacemaker) it prints ranked findings:
the symptom, its cause, the evidence lines and the command that fixes it.

Modules: `finding.py` (Finding, Evidence, the ranking), `cluster_rules.py`
(fencing, leadership, VIPs, nodes, etcd, BMCs: read from events and
status), `host_rules.py` (GPU XIDs, the facility's PLC codes, heat, the
drain budget, clocks, the kernel log, corosync), `collect.py` (gathers the
evidence). The rules are pure: Evidence in, findings out.
"""
