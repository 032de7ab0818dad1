"""Message transports: RabbitMQ (aio-pika) and in-process (asyncio), with one interface."""
