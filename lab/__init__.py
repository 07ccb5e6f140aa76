"""The lab: the demo that runs the whole paper end to end and its report (it may import everything)."""
