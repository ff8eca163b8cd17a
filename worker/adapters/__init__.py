"""The two implementations of each MongoDB-facing interface: ``mongo_*`` (PyMongo async) and
``memory_*`` (in-memory stand-ins for the demo, benchmarks and unit tests)."""
