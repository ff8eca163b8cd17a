"""Fan-out workers: competing consumers of the job queues."""
