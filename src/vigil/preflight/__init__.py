"""`vigil preflight`: what a node needs before an agent runs on it, checked
the way kubeadm's preflight checks are: each check has a stable ID, a
result (pass, warning, error, skipped), what it found and, when it did not
pass, the command that fixes it. Errors make the command exit 1 unless
`--ignore-preflight-errors=ID,...` (or `all`) names them; warnings never do.

Modules: `outcome.py` (Outcome, the result of one check), `system.py` (the
kernel, sysctls, clock, capabilities, links; read under a root directory so
tests can prepare the files), `services.py` (the configuration, ports, etcd,
its disk, GPUs, the fabric manager, the compatibility gate, BMCs),
`run.py` (all of them for one configuration file, the exit code).
"""
