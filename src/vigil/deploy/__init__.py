"""`vigil init`: from one inventory, every machine's files (docs/deployment.md)."""
