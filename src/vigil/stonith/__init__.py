"""STONITH: the devices that power a node off (IPMI, Redfish, the null device),
their configuration (`fencing:`), and the kept IPMI session. The agent's
runner that fences a suspected leader is vigil.agent.stonith; fencing
*tokens*, which resources check, are vigil.resources.guard."""
