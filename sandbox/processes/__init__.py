"""The sandbox's support processes: each a BPMN 2.0 model plus its screens, tools, customers and playbook."""
