"""A kmock emulator that, like a real API server, does not store a write it answers with an error."""

from __future__ import annotations

import math

import kmock


class FaultAwareEmulator(kmock.KubernetesEmulator):
    """kmock's emulator, except that a write answered with an injected error is not stored.

    A real API server that answers 409, 429 or 500 has not applied the write; the stock
    emulator stores it before the injected answer is sent. (Relies on kmock 0.8 internals,
    hence the pinned version in pyproject.toml.)
    """

    async def _handle(self, request):
        for payload in self._payloads:
            status = payload.response.status
            priorities = payload.priorities
            user_rule = not priorities or priorities[0] != -math.inf
            if (user_rule and status is not None and status >= 400
                    and not payload._disabled.is_set() and request in payload._source):
                return await super(kmock.KubernetesEmulator, self)._handle(request)
        return await super()._handle(request)
