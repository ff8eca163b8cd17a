"""RabbitMQ: publishing with confirms, the job queues and the topology."""
