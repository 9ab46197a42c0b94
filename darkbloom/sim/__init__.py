"""Trace-driven routing simulator: the coordinator's routing code against simulated nodes and a simulated clock."""
