"""Experiment: neo-sim vs the real engine on this machine.

Run: python -m experiments.fidelity [--quick]   (also: neo-sim validate [--quick])
The pipeline is neo_engine.fidelity; results go to experiments/results/fidelity/.
"""

from neo_engine.fidelity import main

if __name__ == "__main__":
    raise SystemExit(main())
