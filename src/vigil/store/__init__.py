"""The cluster store: etcd (and its in-memory twin), sessions, election,
member registry and event log."""
