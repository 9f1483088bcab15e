"""`vigil <command>`: split by command group."""
