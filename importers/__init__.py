"""Importers of real logs (XES / CSV event logs, Action-Logger UI logs) into the Trace format."""
