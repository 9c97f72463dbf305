"""Schedules (ir), their builders, the simulator and the cost model.

``collx.algos.cost(schedule, links)`` is the predicted time in seconds (costmodel.cost).
"""
from .costmodel import LinkParams, Links, cost, predict  # noqa: F401
