"""The retail world simulator: a seeded catalog, a documented demand process, inventory physics,
ground truth, a bulk history backfill into the store and a live Kafka stream with fault injection.

Entry points: ``generator.world.build_world``, ``generator.backfill.backfill`` and
``generator.stream.produce``; ``retail generate --help`` on the command line.
"""
