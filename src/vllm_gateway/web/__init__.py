"""The HTTP face of the gateway: routing, the /v1 handler, the operators' routes."""
