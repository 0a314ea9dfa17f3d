"""A pooled container's channel against a real Redis: what its CLI printed before the claim
reaches the session's stream first and in order, and no input is read before the claim."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from wrapper import protocol
from wrapper.channel import Channel, HeldChannel
from wrapper.protocol import GatewayEvent

pytestmark = pytest.mark.docker


async def test_held_events_come_first_in_order_and_inputs_wait_for_the_claim(infra) -> None:
    client = aioredis.Redis.from_url(infra.redis_url, decode_responses=True)
    session_id = str(uuid.uuid4())
    held = HeldChannel()
    try:
        await held.publish(
            {"source": "claude", "type": "control_response", "turn": "", "data": "{}"}
        )
        await held.publish_gateway(GatewayEvent.CLI_READY, claude_session_id="c", warm=True)
        inputs = held.inputs()
        first_input = asyncio.create_task(anext(inputs))
        # A prompt queued with the create, before the container is bound to its session.
        await client.xadd(
            protocol.input_stream_key(session_id),
            {"type": "prompt", "data": '{"type":"prompt","turn_id":"t","prompt":"hi"}'},
        )
        await asyncio.sleep(0.3)
        assert not first_input.done(), "input was read before the claim"
        assert await client.exists(protocol.output_stream_key(session_id)) == 0
        await held.bind(Channel(client, session_id, 1000))
        await held.publish_gateway(GatewayEvent.ERROR, code="after", message="bound")
        entry_id, fields = await asyncio.wait_for(first_input, 10)
        assert fields["type"] == "prompt"
        await held.ack(entry_id)
        written = await client.xrange(protocol.output_stream_key(session_id))
        assert [fields["type"] for _, fields in written] == [
            "control_response",
            GatewayEvent.CLI_READY,
            GatewayEvent.ERROR,
        ]
        await inputs.aclose()
    finally:
        await client.delete(
            protocol.output_stream_key(session_id), protocol.input_stream_key(session_id)
        )
        await client.aclose()
