"""neo_engine: the real torch engine, driven by the shared scheduler in neo_sim.scheduler."""
