"""The front door: routes any HTTP request to a ready inference node and
retries safe requests elsewhere when a node fails."""
