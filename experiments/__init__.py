"""The experiments: each module runs a study on neo-sim and writes its report under results/."""

from pathlib import Path

# The data kept beside the checkout, not in it (../shared: the Azure traces, the measured
# GPU layer times): read from there, never copied into the repository.
SHARED = Path(__file__).resolve().parents[2] / "shared"
