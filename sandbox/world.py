"""How hard the world is and how reviewing operators judge a proposal: the knobs that calibrate the sandbox.

Two worlds are named. ``World()`` is the calibrated default: the states that trip a learned policy up exist
(customers add a second request that must be answered before the case is closed, ask a follow-up question after
the confirmation, mistype their order number or quote another order's, leave their preference open so a
clarifying question is needed, are upset; tool results hold tables whose right row a reply or a note must quote;
a tool sometimes does not answer and the customer sometimes writes while the operator works), and reviewers
judge the way operators review a copilot: a committed guess is an error, the stated facts are checked, an
acceptable alternative is accepted with a personal probability, a reply worded differently less often, an upset
customer makes an operator take over for reasons of their own. ``World.classic()`` switches all of that off: the
sandbox as it was before the calibration (decision 0011).

The difficulty's rates and the review probabilities were set so that the default policy, reviewed in copilot
mode, reproduces the paper's one-week statistics (acceptance per action type, the mix of rejection reasons):
``bench/sandbox_calibration.py`` measures it, docs/sandbox.md ("Calibration against the paper") has the table.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class World(BaseModel):
    """The difficulty of the cases and the reviewers' preference model. Defaults: the calibrated world."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- the cases -----------------------------------------------------------------------------------------
    second_request_rate: float = Field(
        default=0.2, ge=0.0, le=1.0, description="share of openings that add a second, unrelated request"
    )
    answer_second_requests: bool = Field(
        default=True, description="the second request must be answered before the case ends (classic: noise)"
    )
    followup_rate: float = Field(
        default=0.4, ge=0.0, le=1.0, description="share of customers who answer the confirmation with a question"
    )
    wrong_id_rate: float = Field(
        default=0.15, ge=0.0, le=1.0, description="share of order numbers in openings that the customer mistyped"
    )
    wrong_order_rate: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="share of openings naming an item that quote another of the customer's orders (another item)",
    )
    clarify_everywhere: bool = Field(
        default=True, description="billing disputes and warranty claims get a clarifying question too"
    )
    fact_rich_replies: bool = Field(
        default=True, description="confirmations state the facts read from tool results (e.g. the new plan's fee)"
    )
    upset_rate: float = Field(default=0.15, ge=0.0, le=1.0, description="share of upset customers")
    nudge_rate: float = Field(
        default=0.003, ge=0.0, le=0.5, description="per step: the customer writes while the operator works"
    )
    tool_outage_rate: float = Field(
        default=0.1, ge=0.0, le=0.5, description="per tool click: the backend does not answer (try again)"
    )

    # --- the reviewers -------------------------------------------------------------------------------------
    flag_guesses: bool = Field(default=True, description="a committed guess (preference unknown) is a model error")
    strict_facts: bool = Field(default=True, description="a reply must state the same named facts, not just ids")
    accept_alternative: tuple[float, float] = Field(
        default=(0.9, 1.0), description="range of P(accept an acceptable alternative action) over operators"
    )
    accept_alternative_text: tuple[float, float] = Field(
        default=(0.05, 0.25), description="the same for an acceptable reply worded differently"
    )
    wording_is_the_reply_preference: bool = Field(
        default=True,
        description="accept_alternative_text applies to a reply with the intent of the operator's own reply (the "
        "same message worded differently); a reply where the operator would have done something else first is "
        "judged like any alternative (classic: every differing reply)",
    )
    lazy_accept: tuple[float, float] = Field(
        default=(0.02, 0.08), description="range of P(accept a wrong proposal without noticing)"
    )
    environment_reject: float = Field(
        default=0.0, ge=0.0, le=1.0, description="per review: a random environment rejection (classic only)"
    )
    other_reject: float = Field(default=0.004, ge=0.0, le=1.0, description="per review: a rejection for other reasons")
    other_upset: float = Field(
        default=0.15, ge=0.0, le=1.0, description="per review with an upset customer: the operator takes over"
    )

    @model_validator(mode="after")
    def _ranges(self) -> World:
        for name in ("accept_alternative", "accept_alternative_text", "lazy_accept"):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high <= 1.0:
                raise ValueError(f"{name}: expected 0 <= low <= high <= 1, got ({low}, {high})")
        return self

    @classmethod
    def classic(cls) -> World:
        """The sandbox before the calibration: multi-intent openings are noise, no follow-ups, no mistyped ids,
        no nudges, operators guess without being flagged, and every review risks a random environment (1.2 %)
        or other (2 %) rejection regardless of the proposal."""
        return cls(
            second_request_rate=0.15,
            answer_second_requests=False,
            followup_rate=0.0,
            wrong_id_rate=0.0,
            wrong_order_rate=0.0,
            clarify_everywhere=False,
            fact_rich_replies=False,
            upset_rate=0.0,
            nudge_rate=0.0,
            tool_outage_rate=0.0,
            flag_guesses=False,
            strict_facts=False,
            accept_alternative=(0.55, 0.8),
            accept_alternative_text=(0.05, 0.3),
            wording_is_the_reply_preference=False,
            lazy_accept=(0.02, 0.08),
            environment_reject=0.012,
            other_reject=0.02,
            other_upset=0.0,
        )

    @property
    def is_classic(self) -> bool:
        return self == World.classic()
