"""The acceptance critic: copilot feedback, critics behind one interface, calibration, risk-controlled per-slice
thresholds, evaluation, the versioned registry and the nightly retraining job (see docs/critic.md)."""
