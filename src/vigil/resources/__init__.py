"""What a node holds or acts on for the cluster: virtual IPs (vip.py, arp.py)
and token-guarded resources (guard.py: the fencing-token check a resource
runs; actuator.py: the guarded actuator gateway and its PLC; signed.py:
requests signed by the node that sends them)."""
