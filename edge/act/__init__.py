"""act: the door-hold relay, alarm and voice outputs (gpiozero or log)."""
