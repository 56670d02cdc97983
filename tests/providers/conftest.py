"""The session's loopback fault server, shared with tests/reliability (see tests/fakes.py)."""

from __future__ import annotations

from tests.fakes import fault_plan, fault_server

__all__ = ["fault_plan", "fault_server"]
