"""What a node holds for the cluster: virtual IPs (vip.py, arp.py)."""
