"""Faust wiring: app, agents, tables, timers, web views and CLI."""
