"""Simple next-action predictors the policy is measured against and combined with: the floors (most frequent
action per screen, last-activity bigram, longest-suffix n-gram) and the gradient-boosting model on event
attributes and timing."""
