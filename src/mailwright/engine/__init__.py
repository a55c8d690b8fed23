"""Running workflows: the executor, its queues and scheduler, and the expressions steps use."""
