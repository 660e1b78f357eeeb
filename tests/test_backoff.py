"""Which NATS failures an agent retries: transient ones (timeouts, lost connections, JetStream's
"duplicate message id is in process") are retried with backoff; refusals are raised at once."""

from __future__ import annotations

import nats.js.errors
import pytest

from agents._backoff import Backoff, is_transient, retry_transient

FAST = Backoff(first_s=0.001, cap_s=0.002, patience_s=5)


async def test_duplicate_message_id_in_process_is_retried() -> None:
    """A publish answered 10158 (seen in the soak after a paused cluster node came back) is retried
    with the same id, and the retry's answer is returned instead of the agent dying."""
    calls = []

    async def publish() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise nats.js.errors.APIError(
                code=409, err_code=10158, description="duplicate message id is in process"
            )
        return "acked (duplicate)"

    assert await retry_transient(publish, what="publish", backoff=FAST) == "acked (duplicate)"
    assert len(calls) == 3


async def test_a_refusal_is_raised_at_once() -> None:
    """A JetStream refusal that retrying cannot fix (a bad request) is raised on the first try."""
    calls = []

    async def publish() -> None:
        calls.append(1)
        raise nats.js.errors.APIError(code=400, err_code=10003, description="bad request")

    with pytest.raises(nats.js.errors.APIError):
        await retry_transient(publish, what="publish", backoff=FAST)
    assert len(calls) == 1
    assert is_transient(TimeoutError()) and not is_transient(ValueError())
    # KV errors subclass APIError without setting err_code: judged, not crashed on (as the soak saw)
    assert not is_transient(nats.js.errors.KeyWrongLastSequenceError())
