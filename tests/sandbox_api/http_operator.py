"""A simulated operator that works cases through the HTTP API only.

It picks each action the way the sandbox's operator model would (``step_model`` + ``sample`` over the server-side
platform: reading the model is not part of the API under test), then sends it over HTTP. Submit clicks go through
the task-completion route, as a BPM client would complete a task.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fastapi.testclient import TestClient

from sandbox.api import API_PREFIX
from sandbox.operators import SimOperator, operator_pool
from sandbox.platform import MAX_STEPS, SandboxPlatform
from sandbox.simulate import sample, step_model, update_posterior
from schemas import Action, ButtonControl, ClickControl, UIState, action_key


class HttpOperator:
    def __init__(self, client: TestClient, platform: SandboxPlatform, operator_index: int = 0, seed: int = 0) -> None:
        self.client = client
        self.platform = platform
        self.pool: list[SimOperator] = operator_pool(12, seed=0)
        self.operator = self.pool[operator_index % len(self.pool)]
        self.rng = random.Random(seed)
        self.posteriors: dict[str, dict[str, float]] = {}
        self.completed_tasks = 0  # submits that went through the task-completion route

    def url(self, case_id: str, path: str = "") -> str:
        return f"{API_PREFIX}/cases/{case_id}{path}"

    def open(self, process_id: str | None) -> str:
        response = self.client.post(f"{API_PREFIX}/cases", json={"process_id": process_id})
        assert response.status_code == 201, response.text
        case_id: str = response.json()["case_id"]
        return case_id

    def state(self, case_id: str) -> UIState:
        response = self.client.get(self.url(case_id, "/state"))
        assert response.status_code == 200, response.text
        return UIState.model_validate(response.json())  # also re-checks the etag the server computed

    def status(self, case_id: str) -> str:
        response = self.client.get(self.url(case_id))
        assert response.status_code == 200, response.text
        status: str = response.json()["status"]
        return status

    def choose(self, case_id: str) -> Action:
        posterior = self.posteriors.setdefault(case_id, {op.operator_id: 1.0 / len(self.pool) for op in self.pool})
        model = step_model(self.platform, case_id, self.pool, posterior)
        own = model.per_operator[self.operator.operator_id]
        assert own, f"the operator model has no step left on case {case_id}"
        action = sample(own, self.rng)
        self.posteriors[case_id] = update_posterior(posterior, model, action_key(action))
        return action

    def act(self, case_id: str, state: UIState) -> UIState:
        action = self.choose(case_id)
        control = state.screen.control(action.control_id) if isinstance(action, ClickControl) else None
        if isinstance(control, ButtonControl) and control.submits:
            tasks = self.client.get(self.url(case_id, "/tasks")).json()
            assert [t["name"] for t in tasks] == [state.screen.screen_id]
            response = self.client.post(self.url(case_id, f"/tasks/{tasks[0]['task_id']}/complete"))
            if response.status_code == 200:
                self.completed_tasks += 1
                return UIState.model_validate(response.json())
            # A slip: the operator submits too early. The completion route refuses and changes nothing; the
            # operator's click still lands on the screen, which then shows the form errors.
            assert response.status_code == 422, response.text
        response = self.client.post(self.url(case_id, "/actions"), json={"action": action.model_dump(mode="json")})
        assert response.status_code == 200, response.text
        return UIState.model_validate(response.json())

    def work(self, case_id: str, until: Callable[[UIState], bool] | None = None) -> UIState:
        """Act until the case ends (or ``until`` holds for its state); return the last state."""
        state = self.state(case_id)
        for _ in range(MAX_STEPS + 1):
            if self.status(case_id) != "open" or (until is not None and until(state)):
                return state
            state = self.act(case_id, state)
        raise AssertionError(f"case {case_id} did not end within {MAX_STEPS} steps")
