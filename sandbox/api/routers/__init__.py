"""One router per resource: health, processes, cases, tasks, actions."""
