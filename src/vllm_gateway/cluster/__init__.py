"""The gateway as a driver of a Ray cluster: the connection, the nodes and their GPUs."""
