"""Applications built on the commands: the offline demo, its synthetic scene, and ``evaluate``."""
