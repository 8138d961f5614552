"""The reference model's prediction of a probe sent across a change (``ReferenceModel.predict_across``).

The bounds are those of a jittery relay-only world (client-gateway 70-116 ms one way, gateway-resource
20-24 ms): the world in which a goodbye overtook an answer that had passed the gateway before the expiry
(the regression ``jittery_relay_only_expiry_port_unreachable_missing``).
"""

from __future__ import annotations

from sim.reference import ReferenceModel
from sim.reference_types import Alternative, Bounds, Outcome, Prediction

MS = 1_000_000
BOUNDS = Bounds(
    cg_min=70 * MS, cg_max=116 * MS, gr_min=20 * MS, gr_max=24 * MS, pg_min=20 * MS, pg_max=24 * MS
)
CHANGE = 79_000 * MS
"""The change takes effect in ``[CHANGE, CHANGE + 1 s)`` (an expiry and its sweep)."""
BEFORE = Prediction.exact(Outcome.PORT_UNREACHABLE, 1)
AFTER = Prediction.exact(Outcome.NOTHING, 0)
EITHER = {
    Alternative(Outcome.PORT_UNREACHABLE, 1),
    Alternative(Outcome.NOTHING, 0),
    Alternative(Outcome.NOTHING, 1),
}
"""Before, after, or the request through and the answer lost (refused at the gateway or at the client)."""


def model(lossy: bool = False) -> ReferenceModel:
    return ReferenceModel(1, {}, {}, {}, 0, BOUNDS, lossy=lossy)


def across(sent: int, goodbye: bool, lossy: bool = False) -> Prediction:
    return model(lossy).predict_across(sent, BEFORE, AFTER, CHANGE, CHANGE + 1000 * MS, goodbye)


# The latest moment the answer can pass the gateway on its way back, and reach the client.
PASSED = BOUNDS.cg_max + 2 * BOUNDS.gr_max
ARRIVED = PASSED + BOUNDS.cg_max


def test_an_answer_past_the_gateway_before_a_change_without_goodbye_arrives() -> None:
    last = CHANGE - PASSED - 1
    assert across(last, goodbye=False) == BEFORE
    assert set(across(last + 1, goodbye=False).alternatives) == EITHER


def test_a_goodbye_can_overtake_an_answer_that_passed_the_gateway_in_time() -> None:
    """The probe of the regression: sent 166 ms before the expiry, its answer passed the gateway before
    it (at the latest 2 ms before) but may reach the client 44 ms after the earliest goodbye."""
    sent = 78_834 * MS
    assert sent + PASSED < CHANGE
    assert across(sent, goodbye=False) == BEFORE
    assert set(across(sent, goodbye=True).alternatives) == EITHER


def test_with_a_goodbye_the_answer_must_reach_the_client_before_the_goodbye_can() -> None:
    last = CHANGE + BOUNDS.cg_min - ARRIVED - 1
    assert across(last, goodbye=True) == BEFORE
    assert set(across(last + 1, goodbye=True).alternatives) == EITHER


def test_after_the_change_the_goodbye_changes_nothing() -> None:
    first = CHANGE + 1000 * MS - BOUNDS.cg_min
    for goodbye in (False, True):
        assert across(first, goodbye) == AFTER
        assert set(across(first - 1, goodbye).alternatives) == EITHER


def test_lossy_links_add_loss_to_every_case() -> None:
    lossy = across(CHANGE + BOUNDS.cg_min - ARRIVED - 1, goodbye=True, lossy=True)
    assert set(lossy.alternatives) == {
        *BEFORE.alternatives,
        Alternative(Outcome.NOTHING, 0),
        Alternative(Outcome.NOTHING, 1),
    }
